// Service worker: makes the app installable and open offline. It caches the app shell only; API calls,
// photos and results always go to the network (they are private, and a stale edit status would mislead).

const VERSION = "faceedit-shell-v6";
const SHELL = [
  "/",
  "/index.html",
  "/offline.html",
  "/app.css",
  "/app.js",
  "/api.js",
  "/changes.js",
  "/faces.js",
  "/history.js",
  "/inversion.js",
  "/job.js",
  "/messages.js",
  "/photo.js",
  "/result.js",
  "/settings.js",
  "/store.js",
  "/manifest.webmanifest",
  "/icons/icon-192.png",
  "/icons/icon-512.png",
  "/icons/maskable-192.png",
  "/icons/maskable-512.png",
  "/icons/apple-touch-icon.png",
  "/icons/favicon-32.png",
];
const SHELL_PATHS = new Set(SHELL);

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(VERSION).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((key) => key !== VERSION).map((key) => caches.delete(key))))
      .then(() => self.clients.claim()),
  );
});

// Answer from the cache at once and refresh it in the background (stale-while-revalidate): the app opens
// instantly, and a new deploy shows on the next start.
async function fromShell(event, request, path) {
  const cache = await caches.open(VERSION);
  const cached = await cache.match(path);
  const network = fetch(request)
    .then((response) => {
      if (response.ok) cache.put(path, response.clone());
      return response;
    })
    .catch(() => null);
  if (cached) {
    event.waitUntil(network); // keep the worker alive until the refresh is stored
    return cached;
  }
  return (await network) || (await cache.match("/offline.html")) || Response.error();
}

self.addEventListener("fetch", (event) => {
  const { request } = event;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    // Pages: the network when online (fresh app), the cached shell otherwise, the offline page as last resort.
    event.respondWith(
      fetch(request).catch(async () => (await caches.match("/")) || (await caches.match("/offline.html"))),
    );
    return;
  }
  if (SHELL_PATHS.has(url.pathname)) event.respondWith(fromShell(event, request, url.pathname));
  // Everything else (the API, /app-config.json, result images) is not touched: no respondWith.
});
