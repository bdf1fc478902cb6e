/* vqbench leaderboard: sortable tables and row filters. Vanilla JS, no dependencies, no network.
 *
 * - Every <table class="sortable">: click a header cell to sort by that column; the first click sorts
 *   ascending, the next descending. Numeric columns (th[data-type=num]) sort by the cell's data-v
 *   attribute; empty values always sort last. The header gets aria-sort.
 * - Every <div class="filters" data-table="ID">: a family <select> and a text <input>; rows whose
 *   data-family differs or whose text lacks every typed word get the hidden attribute. Pareto points
 *   (svg a[data-row]) of hidden rows get the class "dim". A live count says how many rows show.
 */
(function () {
  "use strict";

  function sortValue(cell, numeric) {
    if (!cell) { return null; }
    var raw = cell.getAttribute("data-v");
    if (numeric) {
      if (raw === null || raw === "") { return null; }
      var x = parseFloat(raw);
      return isNaN(x) ? null : x;
    }
    return (raw !== null ? raw : cell.textContent).trim().toLowerCase();
  }

  function sortBy(table, th) {
    var headRow = th.parentNode;
    var col = Array.prototype.indexOf.call(headRow.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    Array.prototype.forEach.call(headRow.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var keyed = Array.prototype.map.call(body.rows, function (row, i) {
      return { row: row, i: i, v: sortValue(row.cells[col], numeric) };
    });
    keyed.sort(function (a, b) {
      if (a.v === null || b.v === null) {
        if (a.v === null && b.v === null) { return a.i - b.i; }
        return a.v === null ? 1 : -1;
      }
      var c = numeric ? a.v - b.v : (a.v < b.v ? -1 : (a.v > b.v ? 1 : 0));
      if (dir === "descending") { c = -c; }
      return c !== 0 ? c : a.i - b.i;
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k.row); });
    body.appendChild(frag);
  }

  function initSorting(table) {
    var head = table.tHead;
    if (!head) { return; }
    var row = head.rows[head.rows.length - 1];
    Array.prototype.forEach.call(row.cells, function (th) {
      if (th.classList.contains("nosort")) { return; }
      th.classList.add("sorter");
      th.setAttribute("tabindex", "0");
      th.addEventListener("click", function (ev) {
        if (ev.target.closest && ev.target.closest("a")) { return; }  // links in headers navigate
        sortBy(table, th);
      });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(table, th); }
      });
    });
  }

  function initFilter(box) {
    var table = document.getElementById(box.getAttribute("data-table"));
    if (!table) { return; }
    var family = box.querySelector("select");
    var text = box.querySelector("input");
    var count = box.querySelector(".count");
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var texts = rows.map(function (r) { return r.textContent.toLowerCase(); });
    var mine = {};
    rows.forEach(function (r) { if (r.id) { mine[r.id] = true; } });
    var points = Array.prototype.filter.call(document.querySelectorAll("svg a[data-row]"), function (p) {
      return mine[p.getAttribute("data-row")] === true;
    });
    function apply() {
      var fam = family ? family.value : "";
      var words = text ? text.value.toLowerCase().split(/\s+/).filter(Boolean) : [];
      var shown = 0;
      var visible = {};
      rows.forEach(function (row, i) {
        var ok = (!fam || row.getAttribute("data-family") === fam) &&
          words.every(function (w) { return texts[i].indexOf(w) !== -1; });
        row.hidden = !ok;
        if (ok) { shown += 1; visible[row.id] = true; }
      });
      points.forEach(function (p) { p.classList.toggle("dim", !visible[p.getAttribute("data-row")]); });
      if (count) { count.textContent = shown + " of " + rows.length + " rows shown"; }
    }
    if (family) { family.addEventListener("change", apply); }
    if (text) { text.addEventListener("input", apply); }
    apply();
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), initSorting);
    Array.prototype.forEach.call(document.querySelectorAll("div.filters"), initFilter);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
