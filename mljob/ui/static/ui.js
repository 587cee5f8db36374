// Live updates: the server tells every change over Server-Sent Events; the page fetches its changed part again.
(() => {
  const live = document.getElementById("live");
  if (!live) return;
  const key = live.dataset.key; // "namespace/name" on a job page, "" on the list
  const label = document.querySelector(".live-label");
  let timer = null;
  let updates = 0;

  async function refresh() {
    timer = null;
    const url = new URL(location.href);
    url.searchParams.set("fragment", "1");
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (response.status === 200 || response.status === 404) {
        live.innerHTML = await response.text();
        document.body.dataset.updates = String(++updates);
      }
    } catch (error) {
      document.body.dataset.live = "off";
    }
  }
  const soon = () => { if (timer === null) timer = setTimeout(refresh, 150); };

  const source = new EventSource(document.body.dataset.base + "events");
  source.addEventListener("change", (event) => {
    const changed = JSON.parse(event.data);
    if (!key || changed === key || changed === "*") soon();
  });
  source.onopen = () => { document.body.dataset.live = "on"; if (label) label.textContent = "live"; soon(); };
  source.onerror = () => { document.body.dataset.live = "off"; if (label) label.textContent = "reconnecting"; };
  // A running job's logs grow without any object changing: read them again now and then.
  if (key) setInterval(() => { if (live.querySelector("#phase[data-phase=Running]")) soon(); }, 10000);
})();
