/* mmcam viewer: mounts on the .mmcam-viewer element that holds this script. No network, no
   libraries; data comes from inert <script type="application/json"> blocks inside the root:
   data-mmcam="config" (colour table, mode), data-mmcam="index" (one summary per item) and
   data-mmcam-item="N" (an item's maps and images, parsed only when the item is shown). */
(function () {
  "use strict";
  var script = document.currentScript;
  var root = script && script.parentNode;
  if (!root || root.getAttribute("data-mounted")) return;
  root.setAttribute("data-mounted", "1");
  var fallback = root.querySelector(".mm-fallback");
  if (fallback) fallback.remove();

  var config = readJson('script[data-mmcam="config"]');
  var entries = readJson('script[data-mmcam="index"]') || [];
  var uid = root.id;
  var LUT = config.lut;
  var KIND_NAMES = { heatmap: "Map", counterfactual: "Counterfactual", contrast: "Contrastive", guided: "Guided" };
  var PAGE = config.mode === "run" && config.page;

  var state = {
    item: -1, // index of the item shown, -1 on the dataset page
    record: null, // {payload, assets} of the item shown
    target: 0,
    view: "heatmap",
    attention: false,
    marks: false,
    alpha: config.alpha,
    order: entries.map(function (_, i) { return i; }),
  };
  var cache = []; // recently shown items: [{index, record}]
  var itemView = null; // DOM of the item page while shown
  var datasetView = null;

  // ---------- small helpers ----------
  function readJson(selector) {
    var node = root.querySelector(selector);
    return node ? JSON.parse(node.textContent) : null;
  }
  function make(tag, options, children) {
    var node = document.createElement(tag);
    options = options || {};
    Object.keys(options).forEach(function (key) {
      var value = options[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.append(child);
    });
    return node;
  }
  function fmt(value, digits) {
    if (value === null || value === undefined) return "\u2013";
    digits = digits === undefined ? 2 : digits;
    var number = Number(value);
    // tiny non-zero values (a log p of -1.4e-5) keep two significant digits instead of "-0.00"
    var text = number !== 0 && Math.abs(number) < 0.5 * Math.pow(10, -digits) ? number.toExponential(1) : number.toFixed(digits);
    return text.replace("-", "\u2212");
  }
  function probabilityOf(target) {
    return target.logprob === null || target.logprob === undefined ? null : Math.exp(target.logprob);
  }
  function chipColour(p) {
    // red (unlikely) -> yellow -> green (certain), light enough to read dark text on
    return "hsl(" + Math.round(120 * p) + ", " + (p > 0.5 ? 55 : 70) + "%, 84%)";
  }
  function isDark(hex) {
    var r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16), b = parseInt(hex.slice(5, 7), 16);
    return 0.299 * r + 0.587 * g + 0.114 * b < 140;
  }
  function loadImage(source) {
    if (!source) return Promise.resolve(null);
    return new Promise(function (resolve, reject) {
      var image = new Image();
      image.onload = function () { resolve(image); };
      image.onerror = function () { reject(new Error("an embedded image could not be decoded")); };
      image.src = source;
    });
  }
  function ownKeys(event) {
    // text fields, sliders, radio groups and menus use the arrow keys themselves
    var tag = event.target && event.target.tagName;
    return tag === "SELECT" || tag === "TEXTAREA" || (tag === "INPUT" && event.target.type !== "checkbox");
  }

  // ---------- item data: parsed and decoded only when shown ----------
  function record(index) {
    for (var n = 0; n < cache.length; n++) if (cache[n].index === index) return cache[n].record;
    var node = root.querySelector('script[data-mmcam-item="' + index + '"]');
    var payload = JSON.parse(node.textContent);
    var item = { payload: payload, assets: decodeAssets(payload), guided: {} };
    cache.unshift({ index: index, record: item });
    if (cache.length > 6) cache.pop();
    return item;
  }
  function decodeAssets(payload) {
    return Promise.all([loadImage(payload.image), loadImage(payload.sheet)]).then(function (loaded) {
      var tiles = [];
      var sheet = loaded[1];
      if (sheet) {
        var width = payload.tileWidth, height = payload.tileHeight;
        var canvas = document.createElement("canvas");
        canvas.width = sheet.naturalWidth;
        canvas.height = sheet.naturalHeight;
        var context = canvas.getContext("2d", { willReadFrequently: true });
        context.drawImage(sheet, 0, 0);
        var rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
        var rows = payload.tileRows, count = payload.targets.reduce(function (sum, target) { return sum + Object.keys(target.maps).length; }, 0);
        for (var t = 0; t < count; t++) {
          // tile t sits in row t % rows, column floor(t / rows) of the sheet
          var tile = new Uint8Array(width * height);
          var top = (t % rows) * height, left = Math.floor(t / rows) * width;
          for (var y = 0; y < height; y++) {
            var offset = 4 * ((top + y) * canvas.width + left);
            for (var x = 0; x < width; x++) tile[y * width + x] = rgba[offset + 4 * x];
          }
          tiles.push(tile);
        }
      }
      return { image: loaded[0], tiles: tiles };
    });
  }
  function guidedImage(item, t) {
    if (!(t in item.guided)) item.guided[t] = loadImage(item.payload.targets[t].guided);
    return item.guided[t];
  }

  // ---------- drawing ----------
  /* Bilinear resampling with half-pixel centres (torch's align_corners=False, like mmcam's
     upsample), then the colour table, blended over the image as (1 - a) * image + a * colour:
     the formula of mmcam.viz.overlay.overlay. */
  function axis(source, target) {
    var low = new Int32Array(target), high = new Int32Array(target), weight = new Float32Array(target);
    var scale = source / target;
    for (var i = 0; i < target; i++) {
      var s = Math.max(0, (i + 0.5) * scale - 0.5);
      var i0 = Math.min(Math.floor(s), source - 1);
      low[i] = i0;
      high[i] = Math.min(i0 + 1, source - 1);
      weight[i] = s - i0;
    }
    return { low: low, high: high, weight: weight };
  }
  function paintMap(context, base, tile, tileWidth, tileHeight, alpha) {
    var width = base.width, height = base.height;
    var out = context.createImageData(width, height);
    var xs = axis(tileWidth, width), ys = axis(tileHeight, height);
    var src = base.data, dst = out.data, keep = 1 - alpha;
    for (var y = 0; y < height; y++) {
      var r0 = ys.low[y] * tileWidth, r1 = ys.high[y] * tileWidth, fy = ys.weight[y];
      for (var x = 0; x < width; x++) {
        var x0 = xs.low[x], x1 = xs.high[x], fx = xs.weight[x];
        var top = tile[r0 + x0] + (tile[r0 + x1] - tile[r0 + x0]) * fx;
        var bottom = tile[r1 + x0] + (tile[r1 + x1] - tile[r1 + x0]) * fx;
        var q = Math.round(top + (bottom - top) * fy) * 3;
        var o = 4 * (y * width + x);
        dst[o] = Math.round(keep * src[o] + alpha * LUT[q]);
        dst[o + 1] = Math.round(keep * src[o + 1] + alpha * LUT[q + 1]);
        dst[o + 2] = Math.round(keep * src[o + 2] + alpha * LUT[q + 2]);
        dst[o + 3] = 255;
      }
    }
    context.putImageData(out, 0, 0);
  }
  function baseImage(canvas, image) {
    var scratch = document.createElement("canvas");
    scratch.width = canvas.width;
    scratch.height = canvas.height;
    var context = scratch.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#808080";
    context.fillRect(0, 0, scratch.width, scratch.height);
    if (image) {
      context.imageSmoothingQuality = "high";
      context.drawImage(image, 0, 0, scratch.width, scratch.height);
    }
    return context.getImageData(0, 0, scratch.width, scratch.height);
  }
  function drawMarks(context, payload, target) {
    var sx = context.canvas.width / payload.width, sy = context.canvas.height / payload.height;
    context.save();
    context.lineWidth = Math.max(1.5, context.canvas.width / 300);
    (target.truth || []).forEach(function (box) {
      context.strokeStyle = "#39ff88";
      context.setLineDash([]);
      context.strokeRect(box[0] * sx, box[1] * sy, (box[2] - box[0] + 1) * sx, (box[3] - box[1] + 1) * sy);
    });
    if (target.bbox) {
      var b = target.bbox;
      context.strokeStyle = "#ffffff";
      context.setLineDash([6, 4]);
      context.strokeRect(b[0] * sx, b[1] * sy, (b[2] - b[0] + 1) * sx, (b[3] - b[1] + 1) * sy);
    }
    if (target.peak) {
      var px = (target.peak[0] + 0.5) * sx, py = (target.peak[1] + 0.5) * sy, r = Math.max(6, context.canvas.width / 40);
      context.setLineDash([]);
      context.strokeStyle = "#000000";
      context.lineWidth += 2;
      cross(context, px, py, r);
      context.strokeStyle = "#ffffff";
      context.lineWidth -= 2;
      cross(context, px, py, r);
    }
    context.restore();
  }
  function cross(context, x, y, r) {
    context.beginPath();
    context.moveTo(x - r, y); context.lineTo(x + r, y);
    context.moveTo(x, y - r); context.lineTo(x, y + r);
    context.stroke();
  }

  // ---------- item page ----------
  function availableViews(payload) {
    var views = { heatmap: true, counterfactual: false, contrast: false, guided: false, attention: false };
    payload.targets.forEach(function (target) {
      ["counterfactual", "contrast", "attention"].forEach(function (kind) {
        if (kind in target.maps) views[kind] = true;
      });
      if (target.guided) views.guided = true;
    });
    return views;
  }

  function showItem(index) {
    state.item = index;
    state.record = record(index);
    var payload = state.record.payload;
    state.target = Math.min(state.target, Math.max(0, payload.targets.length - 1));
    if (datasetView) datasetView.hidden = true;
    if (itemView) itemView.remove();
    itemView = buildItem(payload);
    root.append(itemView);
    root.setAttribute("data-item", String(index));
    state.record.assets.then(function () { if (state.item === index) redraw(); }, function (error) {
      note(error.message);
    });
    if (PAGE) window.scrollTo(0, 0);
    if (config.mode === "run") {
      // keyboard users land on the words, where the arrow keys act
      var chip = itemView.querySelector('.mm-chip[data-t="' + state.target + '"]');
      if (chip) chip.focus({ preventScroll: true });
    }
  }

  function buildItem(payload) {
    var views = availableViews(payload);
    if (!views[state.view]) state.view = "heatmap";
    var box = config.box;
    var scale = box / Math.max(payload.width, payload.height);
    var cssWidth = Math.max(1, Math.round(payload.width * scale)), cssHeight = Math.max(1, Math.round(payload.height * scale));
    var ratio = window.devicePixelRatio || 1;
    function canvas(label) {
      var node = make("canvas", { className: "mm-canvas", role: "img", "aria-label": label });
      node.width = Math.round(cssWidth * ratio);
      node.height = Math.round(cssHeight * ratio);
      node.style.width = cssWidth + "px";
      node.style.height = cssHeight + "px";
      return node;
    }
    var main = canvas("image with the selected map");
    var attention = canvas("the model's attention for the selected word");
    var mainCaption = make("figcaption");
    var attentionFigure = make("figure", { className: "mm-figure", hidden: true }, [attention, make("figcaption", { text: "model's own attention" })]);
    var figures = make("div", { className: "mm-figures" }, [make("figure", { className: "mm-figure" }, [main, mainCaption]), attentionFigure]);

    var colourbar = make("canvas", { width: 256, height: 1, "aria-hidden": "true" });
    var bar = colourbar.getContext("2d");
    var row = bar.createImageData(256, 1);
    for (var q = 0; q < 256; q++) {
      row.data.set([Math.round(LUT[3 * q]), Math.round(LUT[3 * q + 1]), Math.round(LUT[3 * q + 2]), 255], 4 * q);
    }
    bar.putImageData(row, 0, 0);
    var colourbarRow = make("div", { className: "mm-colourbar", "data-role": "colourbar" }, [make("span", { text: "0" }), colourbar, make("span", { text: "1 (map value)" })]);
    colourbarRow.style.maxWidth = cssWidth + "px";

    var header = make("div", { className: "mm-header" });
    if (config.mode === "run") {
      header.append(
        make("button", { className: "mm-button", "data-action": "back", text: "\u2190 All items", onclick: function () { go(-1); } }),
        make("button", { className: "mm-button", "data-action": "previous", text: "\u2039 Previous", disabled: neighbour(-1) < 0, onclick: function () { go(neighbour(-1)); } }),
        make("button", { className: "mm-button", "data-action": "next", text: "Next \u203a", disabled: neighbour(1) < 0, onclick: function () { go(neighbour(1)); } })
      );
    }
    header.append(
      make("h1", { text: payload.name }),
      make("span", { className: "mm-meta" }, [
        document.createTextNode([payload.model, payload.kind].filter(Boolean).join(" \u00b7 ") + " \u00b7 "),
        make("span", { className: "mm-mono", "data-role": "method", text: payload.method }),
        document.createTextNode(" on "),
        make("span", { className: "mm-mono", "data-role": "layer", text: payload.layer }),
      ])
    );

    var panel = make("div", { className: "mm-panel" });
    if (payload.error) {
      panel.append(make("p", { className: "mm-note", text: "This item failed: " + payload.error }));
    }
    panel.append(wordsSection(payload));
    var details = make("dl", { className: "mm-details", "data-role": "details" });
    panel.append(make("div", { className: "mm-section" }, [make("h2", { text: payload.kind === "caption" ? "Selected word" : "Selected target" }), details]));
    panel.append(controls(payload, views));
    (payload.notes || []).forEach(function (text) { panel.append(make("p", { className: "mm-note", text: text })); });
    panel.append(
      make("p", { className: "mm-help", "data-role": "marks-help", hidden: !state.marks, text: "peak & box: a cross at the peak, the 15% box dashed, ground truth in green" }),
      make("p", { className: "mm-help" }, [
        make("kbd", { text: "\u2190" }), " ", make("kbd", { text: "\u2192" }), " or hover: switch word",
        config.mode === "run" ? " \u00b7 " : null, config.mode === "run" ? make("kbd", { text: "\u2191" }) : null,
        config.mode === "run" ? " " : null, config.mode === "run" ? make("kbd", { text: "\u2193" }) : null,
        config.mode === "run" ? " item \u00b7 " : null, config.mode === "run" ? make("kbd", { text: "Esc" }) : null,
        config.mode === "run" ? " all items" : null,
      ])
    );

    var view = make("section", { className: "mm-item-page", "aria-label": "item " + payload.name }, [
      header,
      make("div", { className: "mm-item" }, [make("div", {}, [figures, colourbarRow]), panel]),
    ]);
    view._mm = { main: main, attention: attention, attentionFigure: attentionFigure, caption: mainCaption, details: details, base: null, cssWidth: cssWidth, cssHeight: cssHeight };
    return view;
  }

  function wordsSection(payload) {
    var section = make("div", { className: "mm-section", style: "border-top:0;padding-top:0" });
    var chips = make("div", { className: "mm-chips", role: "toolbar", "aria-label": payload.kind === "caption" ? "caption words" : "answers" });
    var own = payload.targets.filter(function (t) { return !t.extra; });
    var joined = own.map(function (t) { return t.label; }).join(" ");
    if (payload.kind === "vqa") {
      section.append(make("h2", { text: "Question \u2192 answer" }));
      var question = make("div", { className: "mm-chips", "data-role": "question", "aria-label": "question words" });
      (payload.question.length ? payload.question : [payload.text]).forEach(function (word, w) {
        question.append(make("span", { className: "mm-chip mm-qword", "data-w": w, text: word }));
      });
      section.append(question, make("div", { className: "mm-help", style: "margin:4px 0 8px", text: "question words: red helps the selected answer, blue hurts (gradient \u00d7 embedding)" }));
      if (payload.answer) section.append(make("div", { className: "mm-text", style: "margin-bottom:6px" }, ["model's answer: ", make("strong", { text: payload.answer })]));
    } else {
      section.append(make("h2", { text: payload.kind === "caption" ? "Caption" : "Targets" }));
      if (payload.kind === "caption" && payload.text && payload.text !== joined) {
        section.append(make("div", { className: "mm-text mm-muted", style: "margin-bottom:6px", text: payload.text }));
      }
    }
    payload.targets.forEach(function (target, t) {
      var p = probabilityOf(target);
      var value = p !== null ? "p " + fmt(p) : target.score !== null ? "y " + fmt(target.score, 1) : target.extra ? "contrast" : "";
      var chip = make("button", {
        className: "mm-chip" + (target.extra ? " mm-extra" : ""),
        type: "button",
        "data-t": t,
        title: target.label + (target.logprob !== null ? "  log p = " + fmt(target.logprob, 4) : ""),
        onmouseenter: function () { select(t); },
        onfocus: function () { select(t); },
        onclick: function () { select(t); },
      }, [make("span", { text: target.label }), make("small", { text: value })]);
      if (p !== null) chip.style.background = chipColour(p);
      chips.append(chip);
    });
    section.append(chips);
    if (own.some(function (t) { return t.logprob !== null; })) {
      section.append(make("div", { className: "mm-help", style: "margin-top:6px" }, [
        "chip colour: ", { caption: "p(word | image, words before) ", vqa: "p(answer) " }[payload.kind] || "p(class) ",
        make("span", { className: "mm-legend" }), " 0 \u2192 1",
      ]));
    }
    return section;
  }

  function controls(payload, views) {
    var group = make("div", { className: "mm-segmented", role: "radiogroup", "aria-label": "map shown" });
    ["heatmap", "counterfactual", "contrast", "guided"].forEach(function (kind) {
      var id = uid + "-view-" + kind;
      var input = make("input", { type: "radio", name: uid + "-view", id: id, value: kind, checked: state.view === kind, disabled: !views[kind],
        onchange: function () { state.view = kind; redraw(); } });
      var label = make("label", { for: id, title: kind === "heatmap" ? payload.method : "" }, [input, KIND_NAMES[kind]]);
      group.append(label);
    });
    var slider = make("input", { type: "range", min: 0, max: 1, step: 0.05, value: state.alpha, id: uid + "-opacity", "data-role": "opacity",
      oninput: function () { state.alpha = Number(slider.value); sliderValue.textContent = fmt(state.alpha); redraw(); } });
    var sliderValue = make("span", { className: "mm-mono", text: fmt(state.alpha) });
    var attention = make("input", { type: "checkbox", id: uid + "-attention", "data-role": "attention", checked: state.attention, disabled: !views.attention,
      onchange: function () { state.attention = attention.checked; redraw(); } });
    var marks = make("input", { type: "checkbox", id: uid + "-marks", "data-role": "marks", checked: state.marks,
      onchange: function () { state.marks = marks.checked; redraw(); } });
    return make("div", { className: "mm-section" }, [
      make("h2", { text: "View" }),
      make("div", { className: "mm-controls" }, [
        group,
        make("label", { className: "mm-slider", for: uid + "-opacity" }, ["opacity", slider, sliderValue]),
        make("label", { className: "mm-check", for: uid + "-attention", title: views.attention ? "" : "this model has no attention map" }, [attention, "model's attention"]),
        make("label", { className: "mm-check", for: uid + "-marks", title: "cross: the map's peak; dashed: the 15% box; green: ground truth" }, [marks, "peak & box"]),
        make("button", { className: "mm-button", type: "button", "data-action": "export", text: "Export PNG", onclick: exportPng }),
      ]),
    ]);
  }

  function select(t) {
    if (!state.record) return;
    var count = state.record.payload.targets.length;
    if (t < 0 || t >= count || t === state.target) return;
    state.target = t;
    redraw();
  }

  function note(text) {
    if (itemView) itemView.querySelector(".mm-panel").append(make("p", { className: "mm-note", text: text }));
  }

  function redraw() {
    if (!itemView || !state.record) return;
    var item = state.record, payload = item.payload, parts = itemView._mm;
    var target = payload.targets[state.target];
    itemView.querySelectorAll(".mm-chip[data-t]").forEach(function (chip) {
      var on = Number(chip.getAttribute("data-t")) === state.target;
      chip.classList.toggle("mm-selected", on);
      chip.setAttribute("aria-pressed", on ? "true" : "false");
    });
    root.setAttribute("data-target", String(state.target));
    root.setAttribute("data-view", state.view);
    if (!target) return;
    colourQuestion(payload, target);
    describe(parts.details, payload, target);
    itemView.querySelector('[data-role="marks-help"]').hidden = !state.marks;
    itemView.querySelector('[data-role="colourbar"]').style.visibility = state.view === "guided" ? "hidden" : "";
    var slider = itemView.querySelector('[data-role="opacity"]');
    if (slider) slider.disabled = state.view === "guided";
    item.assets.then(function (assets) {
      if (item !== state.record) return;
      var showAttention = state.attention && "attention" in target.maps;
      parts.attentionFigure.hidden = !showAttention;
      resize(parts, showAttention ? 0.75 : 1); // side by side, both shrink so that the panel still fits beside them
      if (!parts.base) parts.base = baseImage(parts.main, assets.image);
      var context = parts.main.getContext("2d");
      var kind = state.view;
      parts.caption.textContent = captionText(payload, target, kind);
      if (kind === "guided") {
        if (!target.guided) return paintPlain(context, parts, payload, target, "no Guided Grad-CAM for this target");
        guidedImage(item, state.target).then(function (image) {
          if (item !== state.record || state.view !== "guided" || payload.targets[state.target] !== target) return;
          context.imageSmoothingQuality = "high";
          context.drawImage(image, 0, 0, parts.main.width, parts.main.height);
          if (state.marks) drawMarks(context, payload, target);
          drawn();
        });
      } else if (kind in target.maps) {
        paintMap(context, parts.base, assets.tiles[target.maps[kind]], payload.tileWidth, payload.tileHeight, state.alpha);
        if (state.marks) drawMarks(context, payload, target);
        drawn();
      } else {
        paintPlain(context, parts, payload, target, "no " + KIND_NAMES[kind].toLowerCase() + " map for this target");
      }
      if (showAttention) {
        paintMap(parts.attention.getContext("2d"), parts.base, assets.tiles[target.maps.attention], payload.tileWidth, payload.tileHeight, state.alpha);
      }
    });
  }
  function resize(parts, shrink) {
    // canvases keep one canvas pixel per screen pixel at every size, so colours stay exact
    var ratio = window.devicePixelRatio || 1;
    var width = Math.max(1, Math.round(parts.cssWidth * shrink)), height = Math.max(1, Math.round(parts.cssHeight * shrink));
    if (parts.main.width === Math.round(width * ratio) && parts.main.height === Math.round(height * ratio)) return;
    [parts.main, parts.attention].forEach(function (node) {
      node.width = Math.round(width * ratio);
      node.height = Math.round(height * ratio);
      node.style.width = width + "px";
      node.style.height = height + "px";
    });
    parts.base = null;
  }
  function paintPlain(context, parts, payload, target, message) {
    context.putImageData(parts.base, 0, 0);
    if (state.marks) drawMarks(context, payload, target);
    parts.caption.textContent = message;
    drawn();
  }
  function drawn() {
    root.setAttribute("data-drawn", state.item + ":" + state.target + ":" + state.view + ":" + state.alpha);
    markReady();
  }
  function captionText(payload, target, kind) {
    var what = kind === "heatmap" ? payload.method : KIND_NAMES[kind].toLowerCase() + (kind === "guided" ? " Grad-CAM" : " map");
    return "\u201c" + target.label + "\u201d \u2014 " + what;
  }
  function colourQuestion(payload, target) {
    var colours = target.attributionColours || (payload.targets[0] && payload.targets[0].attributionColours);
    var values = target.attributions || (payload.targets[0] && payload.targets[0].attributions);
    itemView.querySelectorAll(".mm-qword").forEach(function (chip) {
      var w = Number(chip.getAttribute("data-w"));
      chip.style.background = colours && colours[w] ? colours[w] : "";
      chip.style.color = colours && colours[w] && isDark(colours[w]) ? "#ffffff" : "";
      chip.title = values && values[w] !== undefined ? "attribution " + fmt(values[w], 3) : "";
    });
  }
  function describe(list, payload, target) {
    list.textContent = "";
    function row(name, value) { list.append(make("dt", { text: name }), make("dd", { text: value })); }
    row(payload.kind === "caption" ? "word" : "target", target.label);
    if (target.logprob !== null) row("log p", fmt(target.logprob, 4) + "   (p = " + fmt(Math.exp(target.logprob), 3) + ")");
    if (target.score !== null && payload.kind !== "caption") row("score y\u1d9c", fmt(target.score, 3));
    row("peak (x, y)", target.peak ? "(" + target.peak[0] + ", " + target.peak[1] + ")" : "none (all-zero map)");
    row("15% box", target.bbox ? "[" + target.bbox.join(", ") + "]" : "none");
    if (target.hit !== null && target.hit !== undefined) row("pointing", target.hit ? "hit: the peak is inside the ground-truth box" : "miss: the peak is outside the ground-truth box");
    row("image", (payload.source ? payload.source + ", " : "") + payload.width + " \u00d7 " + payload.height + " px");
  }

  function exportPng() {
    if (!itemView) return;
    var parts = itemView._mm, payload = state.record.payload;
    var withAttention = !parts.attentionFigure.hidden;
    var out = document.createElement("canvas");
    var gap = withAttention ? Math.round(parts.main.width / 40) : 0;
    out.width = parts.main.width + (withAttention ? gap + parts.attention.width : 0);
    out.height = parts.main.height;
    var context = out.getContext("2d");
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, out.width, out.height);
    context.drawImage(parts.main, 0, 0);
    if (withAttention) context.drawImage(parts.attention, parts.main.width + gap, 0);
    var target = payload.targets[state.target];
    var name = [payload.name, String(state.target).padStart(2, "0"), target ? target.label : "", state.view].join("_");
    var link = make("a", { download: name.replace(/[^A-Za-z0-9._-]+/g, "-") + ".png", href: out.toDataURL("image/png") });
    link.click();
  }

  // ---------- dataset page ----------
  var SORTS = {
    order: { label: "file order", key: function (e, i) { return i; } },
    minLogprob: { label: "lowest word log p", key: function (e) { return e.minLogprob; } },
    weakestPeak: { label: "weakest map peak", key: function (e) { return e.weakestPeak; } },
    pointing: { label: "pointing", key: function (e) { return e.pointing; } },
  };
  function buildDataset() {
    var hasPointing = entries.some(function (e) { return e.pointing !== null; });
    var search = make("input", { type: "search", placeholder: "filter by text or name", "aria-label": "filter by text", "data-role": "search", oninput: apply });
    var sort = make("select", { "aria-label": "sort by", "data-role": "sort", onchange: apply });
    Object.keys(SORTS).forEach(function (key) {
      if (key === "pointing" && !hasPointing) return;
      sort.append(make("option", { value: key, text: SORTS[key].label }));
    });
    var descending = make("input", { type: "checkbox", "data-role": "descending", onchange: apply });
    var maxLogprob = make("input", { type: "number", step: "0.5", max: "0", placeholder: "any", "data-role": "max-logprob", "aria-label": "lowest log p at most", oninput: apply });
    var maxPeak = make("input", { type: "number", step: "0.05", min: "0", max: "1", placeholder: "any", "data-role": "max-peak", "aria-label": "weakest peak at most", oninput: apply });
    var pointing = make("select", { "data-role": "pointing", "aria-label": "pointing", onchange: apply }, [
      make("option", { value: "", text: "all" }), make("option", { value: "miss", text: "with a miss" }), make("option", { value: "hit", text: "all hits" }),
    ]);
    var count = make("span", { className: "mm-count", "aria-live": "polite" });
    var toolbar = make("div", { className: "mm-toolbar" }, [
      search,
      make("label", {}, ["sort", sort]),
      make("label", { className: "mm-check" }, [descending, "descending"]),
      make("label", {}, ["log p \u2264", maxLogprob]),
      make("label", {}, ["peak \u2264", maxPeak]),
      hasPointing ? make("label", {}, ["pointing", pointing]) : null,
      count,
    ]);
    var meta = config.meta || {};
    var header = make("div", { className: "mm-header" }, [
      make("h1", { text: config.title }),
      make("span", { className: "mm-meta", text: [meta.model, meta.method && meta.layer ? meta.method + " on " + meta.layer : meta.method, entries.length + " items", meta.format].filter(Boolean).join(" \u00b7 ") }),
    ]);
    var grid = make("div", { className: "mm-grid", role: "list" });
    var cards = entries.map(function (entry, i) {
      var badges = make("div", { className: "mm-badges" });
      if (entry.error) badges.append(make("span", { className: "mm-badge mm-bad", text: "error" }));
      if (entry.minLogprob !== null) {
        badges.append(make("span", { className: "mm-badge" + (entry.minLogprob < Math.log(0.5) ? " mm-bad" : ""), title: "lowest log p: " + entry.minWord,
          text: "min log p " + fmt(entry.minLogprob) }));
      }
      if (entry.weakestPeak !== null) badges.append(make("span", { className: "mm-badge", title: "weakest map peak (1 \u2212 mean/max)", text: "peak " + fmt(entry.weakestPeak) }));
      if (entry.pointing !== null) {
        badges.append(make("span", { className: "mm-badge " + (entry.pointing < 1 ? "mm-bad" : "mm-good"), text: "pointing " + Math.round(100 * entry.pointing) + "%" }));
      }
      var text = entry.error || (entry.kind === "vqa" ? entry.text + " \u2192 " + (entry.answer || "") : entry.text);
      var thumb = entry.thumb ? make("img", { className: "mm-thumb", src: entry.thumb, alt: "", loading: "lazy", decoding: "async" }) : make("div", { className: "mm-thumb" });
      return make("button", { className: "mm-card", type: "button", role: "listitem", "data-i": i, onclick: function () { go(i); } }, [
        thumb,
        make("div", { style: "min-width:0" }, [make("div", { className: "mm-card-name", text: entry.name }), make("div", { className: "mm-card-text", text: text }), badges]),
      ]);
    });
    var empty = make("div", { className: "mm-empty", hidden: true, text: "No item matches these filters." });
    function apply() {
      var needle = search.value.trim().toLowerCase();
      var key = SORTS[sort.value].key;
      var lp = maxLogprob.value === "" ? null : Number(maxLogprob.value);
      var pk = maxPeak.value === "" ? null : Number(maxPeak.value);
      var order = entries.map(function (_, i) { return i; }).filter(function (i) {
        var e = entries[i];
        if (needle && (e.name + " " + e.text + " " + (e.answer || "")).toLowerCase().indexOf(needle) < 0) return false;
        if (lp !== null && !(e.minLogprob !== null && e.minLogprob <= lp)) return false;
        if (pk !== null && !(e.weakestPeak !== null && e.weakestPeak <= pk)) return false;
        if (pointing.value === "miss" && !(e.pointing !== null && e.pointing < 1)) return false;
        if (pointing.value === "hit" && e.pointing !== 1) return false;
        return true;
      });
      var sign = descending.checked ? -1 : 1;
      order.sort(function (a, b) {
        var ka = key(entries[a], a), kb = key(entries[b], b);
        if (ka === null || ka === undefined) return kb === null || kb === undefined ? a - b : 1; // unknown values last
        if (kb === null || kb === undefined) return -1;
        return ka === kb ? a - b : sign * (ka - kb);
      });
      state.order = order;
      var fragment = document.createDocumentFragment();
      var shown = new Set(order);
      order.forEach(function (i) { cards[i].hidden = false; fragment.append(cards[i]); });
      cards.forEach(function (card, i) { if (!shown.has(i)) { card.hidden = true; fragment.append(card); } });
      grid.append(fragment);
      empty.hidden = order.length > 0;
      count.textContent = order.length === entries.length ? entries.length + " items" : order.length + " of " + entries.length + " items";
    }
    cards.forEach(function (card) { grid.append(card); });
    var view = make("section", { className: "mm-dataset", "aria-label": "all items" }, [header, toolbar, grid, empty]);
    apply();
    return view;
  }

  function neighbour(step) {
    var at = state.order.indexOf(state.item);
    if (at < 0) return -1;
    var next = at + step;
    return next >= 0 && next < state.order.length ? state.order[next] : -1;
  }

  // ---------- navigation ----------
  function go(index) {
    if (PAGE) {
      var hash = index < 0 ? "#" : "#item-" + index;
      if (location.hash !== hash) { location.hash = hash; return; }
    }
    route(index);
  }
  function route(index) {
    if (index >= 0 && index < entries.length) {
      showItem(index);
      return;
    }
    var previous = state.item;
    state.item = -1;
    state.record = null;
    root.removeAttribute("data-item");
    if (itemView) { itemView.remove(); itemView = null; }
    datasetView.hidden = false;
    var card = previous >= 0 && datasetView.querySelector('.mm-card[data-i="' + previous + '"]');
    if (card) card.focus();
  }
  function fromHash() {
    var match = /^#item-(\d+)$/.exec(location.hash);
    return match ? Number(match[1]) : -1;
  }
  function onKey(event) {
    if (!itemView || ownKeys(event) || event.altKey || event.ctrlKey || event.metaKey) return;
    var handled = true;
    var count = state.record.payload.targets.length;
    if (event.key === "ArrowRight") select(Math.min(count - 1, state.target + 1));
    else if (event.key === "ArrowLeft") select(Math.max(0, state.target - 1));
    else if (event.key === "Home") select(0);
    else if (event.key === "End") select(count - 1);
    else if (config.mode === "run" && event.key === "ArrowDown" && neighbour(1) >= 0) go(neighbour(1));
    else if (config.mode === "run" && event.key === "ArrowUp" && neighbour(-1) >= 0) go(neighbour(-1));
    else if (config.mode === "run" && event.key === "Escape") go(-1);
    else handled = false;
    if (!handled) return;
    event.preventDefault();
    var chip = itemView && itemView.querySelector('.mm-chip[data-t="' + state.target + '"]');
    if (chip && root.contains(document.activeElement) && document.activeElement.classList.contains("mm-chip")) chip.focus();
  }
  var readyMarked = false;
  function markReady() {
    if (readyMarked) return;
    readyMarked = true;
    root.setAttribute("data-ready-ms", String(Math.round(performance.now())));
    root.setAttribute("data-ready", "1");
  }

  // ---------- start ----------
  if (config.mode === "run") {
    datasetView = buildDataset();
    root.append(datasetView);
    if (PAGE) {
      document.addEventListener("keydown", onKey);
      window.addEventListener("hashchange", function () { route(fromHash()); });
      if (fromHash() >= 0) route(fromHash());
    } else {
      root.addEventListener("keydown", onKey);
    }
    markReady();
  } else {
    root.addEventListener("keydown", onKey);
    showItem(0);
  }
})();
