// body[data-page] names the page on screen and body[data-ready="1"] says its first load finished (the
// browser tests wait for it; people do not see it).
export function ready(page) {
  document.body.dataset.page = page;
  document.body.dataset.ready = "1";
}

export function loading(page) {
  document.body.dataset.page = page;
  document.body.dataset.ready = "0";
}
