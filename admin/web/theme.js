// Applies the stored theme before the first paint, so a dark-theme user never sees a white flash.
(function () {
  try {
    var t = localStorage.getItem('synapse-theme');
    if (t === 'light' || t === 'dark') document.documentElement.dataset.theme = t;
  } catch (e) { /* storage may be blocked; the system theme applies */ }
})();
