import { defineConfig } from "vite";

// `npm run dev` proxies the API to a hub on 127.0.0.1:8080 (TAPWATCH_HUB overrides it).
const hub = process.env.TAPWATCH_HUB ?? "http://127.0.0.1:8080";

export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1500 },
  server: { proxy: { "/api": { target: hub, ws: true } } },
});
