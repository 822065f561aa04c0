// The PMG demo page: pick a user or click stickers into a history, pick a target, ask the server
// (research/pmg/demo/server.py) and show its answer. Every text from the data or the server goes in through
// textContent or a DOM property, never as markup.
"use strict";

const state = {world: null, items: new Map(), history: [], target: null, mode: "history", busy: false};
const $ = (id) => document.getElementById(id);

// An element with properties set as DOM properties (className, textContent, src, title, ...) and children
// appended as nodes or text.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

// An image shown at `size` CSS pixels; a smaller image is scaled up with nearest-neighbour sampling.
function picture(src, size, alt) {
  const img = el("img", {src, alt, className: size >= 128 ? "big" : "thumb"});
  img.style.width = img.style.height = `${size}px`;
  img.addEventListener("load", () => img.classList.toggle("pixel", img.naturalWidth < size));
  return img;
}

const itemImage = (id) => `/items/${encodeURIComponent(id)}`;
const itemTitle = (id) => (state.items.get(id) || {title: id}).title;

async function fetchJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // not JSON: reported below by the status
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `error: the server answered HTTP ${response.status}`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ---------------------------------------------------------------------------------------------------------------
// The request: user, history, target, conversation
// ---------------------------------------------------------------------------------------------------------------
function sticker(id, size, onClick, caption = true) {
  const button = el("button", {type: "button", className: "sticker", title: `${itemTitle(id)} (${id})`},
                    picture(itemImage(id), size, itemTitle(id)));
  if (caption) button.append(el("span", {textContent: itemTitle(id)}));
  button.dataset.id = id;
  button.addEventListener("click", onClick);
  return button;
}

function renderPicked() {
  const history = $("history");
  history.replaceChildren(...state.history.map((id, i) => sticker(id, 64, () => {
    state.history.splice(i, 1);
    customRequest();
  })));
  if (!state.history.length) history.append(el("span", {className: "empty", textContent: "no stickers yet"}));
  const target = $("target");
  target.replaceChildren(state.target === null
    ? el("span", {className: "empty", textContent: "none yet"})
    : sticker(state.target, 64, () => { state.target = null; customRequest(); }));
  for (const button of $("grid").querySelectorAll(".sticker")) {
    button.classList.toggle("in-history", state.history.includes(button.dataset.id));
    button.classList.toggle("is-target", button.dataset.id === state.target);
  }
}

// The request no longer is the picked user's sample.
function customRequest() {
  $("user").value = "";
  renderPicked();
}

function clickGridItem(id) {
  if (state.mode === "target") {
    state.target = id;
  } else if (state.history.includes(id)) {
    state.history = state.history.filter((h) => h !== id);
  } else {
    state.history.push(id);
  }
  customRequest();
}

function pickUser() {
  const user = state.world.users.find((u) => u.id === $("user").value);
  if (!user) return;
  state.history = [...user.history];
  state.target = user.target;
  $("conversation").value = user.conversation.join("\n");
  renderPicked();
}

function renderWorld(world) {
  state.world = world;
  for (const item of world.items) state.items.set(item.id, item);
  const soft = world.soft_checkpoint ? "a trained soft preference" : "keywords only (no trained soft preference)";
  $("about").textContent = `${world.config}: ${world.items.length} items, ${world.users.length} simulated users; ` +
    `PMG runs on ${soft}.`;
  for (const user of world.users) {
    const themes = user.themes.length ? ` (likes ${user.themes.join(", ")})` : "";
    $("user").append(el("option", {value: user.id, textContent: `${user.id}${themes}`}));
  }
  const themes = new Map();
  for (const item of world.items) {
    if (!themes.has(item.theme)) themes.set(item.theme, []);
    themes.get(item.theme).push(item.id);
  }
  $("grid").replaceChildren(...[...themes].flatMap(([theme, ids]) => [
    el("h4", {textContent: theme}),
    el("div", {className: "theme"}, ...ids.map((id) => sticker(id, 48, () => clickGridItem(id), false))),
  ]));
  renderPicked();
}

// ---------------------------------------------------------------------------------------------------------------
// The answer
// ---------------------------------------------------------------------------------------------------------------
const chips = (words) => (words.length ? words.map((w) => el("span", {className: "chip", textContent: w}))
  : [el("span", {className: "empty", textContent: "(none)"})]);
const number = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(4));

function candidateCard(c) {
  const rows = [["w_p", c.w_p], ["w_t", c.w_t], ["d_p", c.d_p], ["d_t", c.d_t], ["z", c.z]];
  const card = el("div", {className: c.chosen ? "candidate chosen" : "candidate"},
    picture(c.image, 128, `candidate ${c.k}.${c.m}`),
    el("table", {}, ...rows.map(([name, value]) => el("tr", {}, el("td", {textContent: name}),
                                                      el("td", {textContent: number(value)})))));
  if (c.chosen) card.append(el("div", {className: "badge", textContent: "chosen"}));
  return card;
}

function renderResult(answer) {
  $("soft").textContent = answer.soft ? "Soft preference: on (the trained preference embedding)"
    : "Soft preference: off (keywords only: no trained soft preference for this config)";
  $("preference-keywords").replaceChildren(...chips(answer.preference_keywords));
  $("target-keywords").replaceChildren(...chips(answer.target_keywords));
  $("result-history").replaceChildren(...answer.history.map((item) => picture(itemImage(item.id), 64, item.title)));
  $("result-target").replaceChildren(picture(itemImage(answer.target.id), 128, answer.target.title));
  const plain = answer.methods.no_personalization;
  $("no-personalization").replaceChildren(picture(plain.candidates[plain.chosen].image, 128, "no personalization"));
  const pmg = answer.methods.pmg;
  $("pmg-chosen").replaceChildren(picture(pmg.candidates[pmg.chosen].image, 128, "PMG"));
  $("pmg-candidates").replaceChildren(...pmg.candidates.map(candidateCard));
  $("result").dataset.sample = answer.sample;
  $("result").hidden = false;
}

async function generate() {
  if (state.busy) return;
  state.busy = true;
  $("generate").disabled = true;
  showError("");
  $("status").textContent = "Generating\u2026 (the first request loads the models and compiles them: about a " +
    "minute on a CPU; later ones take seconds)";
  const conversation = $("conversation").value.split("\n").map((t) => t.trim()).filter((t) => t);
  try {
    const answer = await fetchJSON("/api/personalize", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({history: state.history, target: state.target, conversation}),
    });
    renderResult(answer);
    $("status").textContent = `Done: ${answer.prepared ? "the dataset's sample" : "a new request"} ${answer.sample}.`;
  } catch (error) {
    $("status").textContent = "";
    showError(error.message);
  } finally {
    state.busy = false;
    $("generate").disabled = false;
  }
}

async function start() {
  state.mode = document.querySelector("input[name=mode]:checked").value;  // a reload may keep the last choice
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { state.mode = radio.value; });
  }
  $("user").addEventListener("change", pickUser);
  $("clear-history").addEventListener("click", () => { state.history = []; customRequest(); });
  $("generate").addEventListener("click", generate);
  try {
    renderWorld(await fetchJSON("/api/world"));
  } catch (error) {
    showError(error.message);
  }
}

start();
