// Sets the theme before the first paint, so a dark-theme user never sees a white flash: the one
// the user picked (stored), else the system's, followed while the user has picked none.
(function () {
  var root = document.documentElement;
  var dark = matchMedia('(prefers-color-scheme: dark)');
  function picked() {
    try {
      var t = localStorage.getItem('synapse-theme');
      return t === 'light' || t === 'dark' ? t : '';
    } catch (e) { return ''; } // storage may be blocked; the system theme applies
  }
  function apply() { root.dataset.theme = picked() || (dark.matches ? 'dark' : 'light'); }
  apply();
  dark.addEventListener('change', function () {
    if (!picked()) {
      apply();
      window.dispatchEvent(new Event('synapse-theme'));
    }
  });
})();
