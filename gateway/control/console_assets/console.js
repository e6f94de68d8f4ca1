// kt console: refresh the live part of the page from the server (?fragment=1) every few seconds,
// and open an event's trace without a full reload. The page works without this script.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.fetch) { return; }
  var every = (parseInt(live.getAttribute("data-refresh"), 10) || 5) * 1000;
  var busy = false;
  function refresh() {
    if (busy) { return; }
    busy = true;
    var query = window.location.search ? window.location.search + "&" : "?";
    fetch(window.location.pathname + query + "fragment=1", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) { live.innerHTML = html; live.removeAttribute("data-stale"); })  // escaped by the server
      .catch(function () { live.setAttribute("data-stale", "1"); })
      .then(function () { busy = false; });
  }
  live.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a.evt, a.close") : null;
    if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey) { return; }
    ev.preventDefault();
    window.history.replaceState(null, "", a.getAttribute("href").split("#")[0]);
    busy = false;
    refresh();
  });
  document.body.classList.add("js");
  window.setInterval(refresh, every);
})();
