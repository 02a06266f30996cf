// The hub's API, as the dashboard uses it: same-origin requests with the session cookie, the
// CSRF token on every change, problem documents turned into errors that say what went wrong.

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public field?: string,
  ) {
    super(message);
  }
}

let csrf: string | null = null;

export interface Me {
  username: string;
  role: "viewer" | "analyst" | "admin";
  csrf_token?: string;
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  // A form goes as multipart/form-data (the browser writes the boundary); anything else as JSON.
  const form = body instanceof FormData;
  if (body !== undefined && !form) headers["content-type"] = "application/json";
  if (method !== "GET" && csrf) headers["x-csrf-token"] = csrf;
  let res: Response;
  try {
    res = await fetch(`/api/v1${path}`, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : form ? (body as FormData) : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the hub cannot be reached (${(e as Error).message})`);
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const p = (data ?? {}) as { detail?: string; field?: string };
    if (res.status === 401 && path !== "/auth/login") onUnauthorized();
    throw new ApiError(res.status, p.detail ?? `${res.status} ${res.statusText}`, p.field);
  }
  return data as T;
}

let onUnauthorized: () => void = () => {};
export function whenUnauthorized(f: () => void) {
  onUnauthorized = f;
}

export const api = {
  get: <T>(path: string) => request<T>("GET", path),
  post: <T>(path: string, body?: unknown) => request<T>("POST", path, body ?? {}),
  patch: <T>(path: string, body: unknown) => request<T>("PATCH", path, body),
  put: <T>(path: string, body: unknown) => request<T>("PUT", path, body),
  del: (path: string) => request<void>("DELETE", path),
  async login(username: string, password: string): Promise<Me> {
    const me = await request<Me>("POST", "/auth/login", { username, password });
    csrf = me.csrf_token ?? null;
    return me;
  },
  async me(): Promise<Me> {
    const me = await request<Me>("GET", "/auth/me");
    csrf = me.csrf_token ?? null;
    return me;
  },
  async logout() {
    await request<void>("POST", "/auth/logout");
    csrf = null;
  },
};

/** A query string from the set values. */
export function qs(params: Record<string, string | number | boolean | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : "";
}

// The API's shapes (see /api/v1/openapi.json).
export interface TrafficPoint {
  bucket: string;
  packets: number;
  bytes: number;
  tcp_packets: number;
  udp_packets: number;
  icmp_packets: number;
  other_packets: number;
  flows_started: number;
  flows_ended: number;
}
export interface Stats {
  from: string;
  to: string;
  bucket: number;
  series: TrafficPoint[];
  totals: TrafficPoint;
  top_ports: { protocol: number; port: number; packets: number; bytes: number }[];
  top_talkers: { ip: string; packets: number; bytes: number }[];
}
export interface Reason {
  feature: string;
  value: number;
  contribution: number;
}
export interface Anomaly {
  id: number;
  device: string;
  kind: string;
  severity: string;
  state: string;
  confidence: number;
  score: number;
  threshold: number;
  detector: string;
  src_ip: string;
  dst_ip: string | null;
  dst_port: number | null;
  protocol: number | null;
  first_seen: string;
  last_seen: string;
  count: number;
  reasons: Reason[];
  acknowledged_at: string | null;
  acknowledged_by: string | null;
  resolved_at: string | null;
  resolved_by: string | null;
  suppressed: boolean;
  has_evidence: boolean;
}
export interface Note {
  id: number;
  ts: string;
  author: string;
  body: string;
}
export interface CaptureDrops {
  interface: string;
  packets: number;
  kernel_drops: number;
  queue_drops: number;
  parse_errors: number;
}
export interface Device {
  id: string;
  state: string;
  health: "ok" | "stale" | "offline" | "unknown";
  version: string | null;
  uptime_s: number | null;
  last_seen: string | null;
  metrics: {
    ts: string;
    cpu_percent: number;
    mem_used_bytes: number;
    mem_total_bytes: number;
    disk_used_bytes: number;
    disk_total_bytes: number;
    flows_active: number;
    store_dropped: number;
    capture: CaptureDrops[];
  } | null;
  /** Each stream's seqs as the hub took them. */
  streams: StreamSeq[];
}
export interface StreamSeq {
  stream: string;
  last_seq: number;
  received: number;
  confirmed_seq: number;
  missing: number;
  lost: number;
  regressions: number;
  conflicts: number;
}
export interface MetricsPoint {
  bucket: string;
  cpu_percent: number;
  mem_used_bytes: number;
  mem_total_bytes: number;
  disk_used_bytes: number;
  disk_total_bytes: number;
  net_rx_bps: number;
  net_tx_bps: number;
  flows_active: number;
  kernel_drops: number;
  queue_drops: number;
  store_dropped: number;
}
export interface Flow {
  device: string;
  start: string;
  end: string;
  src_ip: string;
  src_port: number;
  dst_ip: string;
  dst_port: number;
  protocol: number;
  end_reason: string;
  packets: number;
  bytes: number;
}
export interface User {
  id: number;
  username: string;
  role: string;
  disabled: boolean;
  created_at: string;
}
export interface Token {
  id: number;
  name: string;
  username: string;
  created_at: string;
  expires_at: string | null;
  last_used: string | null;
}
export interface Rule {
  id: number;
  created_at: string;
  created_by: string;
  device: string | null;
  kind: string | null;
  host: string | null;
  net: string | null;
  port: number | null;
  comment: string;
}

// The fleet's configuration.
export interface DeviceSync {
  device: string;
  group: string | null;
  state: string;
  sync: "in_sync" | "pending" | "failed" | "offline";
  desired_revision: number;
  desired_hash: string;
  applied_revision: number;
  applied_hash: string;
  result_revision: number;
  result: string | null;
  error: string;
  desired_at: string | null;
  applied_at: string | null;
}

export interface FleetDevice extends DeviceSync {
  desired: unknown;
  layers: number[];
}

export interface FleetRevision {
  id: number;
  scope: string;
  target: string;
  revision: number;
  document: unknown;
  hash: string;
  author: string;
  comment: string;
  created_at: string;
}

export interface FleetLayer {
  scope: string;
  target: string;
  current: FleetRevision | null;
}

export interface DeviceCommand {
  id: number;
  device: string;
  command: "reload" | "retry_config";
  author: string;
  created_at: string;
  published_at: string | null;
  result: "applied" | "refused" | "failed" | null;
  detail: string;
  result_at: string | null;
}

export interface ModelInfo {
  sha256: string;
  kind: "autoencoder" | "classifier";
  name: string;
  version: string;
  features: string[];
  classes: string[];
  size: number;
  fixture_sha256: string;
  fixture_rows: number;
  author: string;
  comment: string;
  created_at: string;
}

export interface UpdateInfo {
  sha256: string;
  version: string;
  arch: string;
  size: number;
  manifest: { files: { name: string; size: number; mode: number; sha256: string }[] };
  author: string;
  comment: string;
  created_at: string;
}

export interface Group {
  name: string;
  comment: string;
}
