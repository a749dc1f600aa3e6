/* The live dashboard (GET /). Plain script, no build step.
 *
 * Key: asked for once, kept in sessionStorage (this tab only), sent as
 * "Authorization: Bearer" to the HTTP API and as ?token= to the WebSocket
 * (browsers cannot set headers on a WebSocket). Never put in the page URL.
 *
 * Reconnects: when the stream drops (web restart, network), the page says
 * so and reconnects with exponential backoff (0.5 s doubling to 30 s, with
 * jitter), showing the countdown and the attempt; a successful connection
 * resets the backoff and backfills the per-minute chart. A rejected key
 * (close 1008 "authentication ...") or an automatic logoff (close 4408, no
 * activity for the server's idle time) does not reconnect: the key is
 * forgotten and asked for again. While someone uses the page (mouse, keys,
 * scroll) it tells the server, at most every 30 s, so they are not logged off.
 *
 * Anomalies: the metric chart marks the anomalies live detection found on
 * the chosen metric (GET /v1/metrics/{name}/anomalies for the chart's range,
 * then {"kind": "anomaly"} frames as they come) at their bucket, with the
 * expected band (lower..upper) shaded there, and lists them in a table under
 * the chart: the markers' text alternative.
 */
(function () {
  "use strict";

  var KEY_NAME = "analytics.readKey";
  var WINDOW_MINUTES = 30;
  var FEED_MAX = 300;
  var COLORS = ["#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb",
                "#f9ab00", "#5f6368", "#c5221f", "#0b8043"];
  var CLOSE_AUTH = 1008, CLOSE_IDLE = 4408;
  var ANOMALY_COLOR = "#c5221f";
  var BAND_FILL = "rgba(147, 52, 230, 0.22)";
  var ANOMALIES_MAX = 500;

  var $ = function (id) { return document.getElementById(id); };

  var state = {
    ws: null, attempts: 0, reconnectTimer: null, countdownTimer: null,
    connectedOnce: false, liveFrom: 0, received: 0, reconnects: 0,
    feed: [], paused: false, types: new Set(), metricNames: new Set(),
    live: new Map(),        // type -> Map(minute epoch s -> count), from the stream
    backfill: new Map(),    // type -> Map(minute -> count), from /v1/metrics
    lastActive: 0, statsTimer: null, metricTimer: null, rateTimer: null,
    chosenMetric: "", lastMetricRefresh: 0, rateNote: "", lastStats: null, prevStats: null,
    metricLists: null,      // the chosen metric's [p50, p95, p99] points, as last loaded
    anomalies: [],          // the chosen metric's anomalies in the window, oldest first
    liveAnomalies: 0,       // of which arrived on the stream
    anomalyProblem: "",     // why they could not be loaded, if so
    anomaliesRefused: false // 403 (a user-scoped key): not asked again
  };
  var charts = { rate: null, rateTypes: "", metric: null };
  window.analyticsDashboard = { state: state, charts: charts };

  // -- key --------------------------------------------------------------
  function getKey() { return sessionStorage.getItem(KEY_NAME); }

  function forgetKey(message) {
    sessionStorage.removeItem(KEY_NAME);
    stopAll();
    $("main").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    var err = $("login-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("key").value = "";
    $("key").focus();
  }

  function setStatus(text, kind) {
    var el = $("status");
    el.textContent = text;
    el.className = "status " + kind;
  }

  function api(path) {
    return fetch(path, { headers: { Authorization: "Bearer " + getKey() }, cache: "no-store" });
  }

  // -- stream -----------------------------------------------------------
  function connect() {
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    var scheme = location.protocol === "https:" ? "wss" : "ws";
    var url = scheme + "://" + location.host + "/v1/stream?token=" + encodeURIComponent(getKey());
    setStatus(state.connectedOnce ? "Reconnecting…" : "Connecting…", "retry");
    var ws = new WebSocket(url);
    state.ws = ws;
    var opened = false;
    ws.onopen = function () {
      opened = true;
      if (state.connectedOnce) { state.reconnects += 1; }
      state.connectedOnce = true;
      state.attempts = 0;
      state.liveFrom = minuteOf(Date.now() / 1000);
      setStatus(state.reconnects ? "Live (reconnected)" : "Live", "live");
      backfillRates();
    };
    ws.onmessage = function (msg) {
      var message;
      try { message = JSON.parse(msg.data); } catch (e) { return; }
      state.received += 1;
      if (message.kind === "event") { onEvent(message.data); }
      else if (message.kind === "metric") { onMetric(message.data); }
      else if (message.kind === "anomaly") { onAnomaly(message.data); }
    };
    ws.onclose = function (e) {
      if (state.ws !== ws) { return; }  // replaced or stopped on purpose
      state.ws = null;
      if (e.code === CLOSE_AUTH && /^authentication/.test(e.reason || "")) {
        forgetKey("The server rejected this key (it must be a valid read key).");
        setStatus("Key rejected", "bad");
        return;
      }
      if (e.code === CLOSE_IDLE) {
        forgetKey(/^time limit/.test(e.reason || "")
          ? "Logged off: a stream lasts a limited time. Enter the key again to continue."
          : "Logged off after a period of inactivity. Enter the key again to continue.");
        setStatus("Logged off (inactive)", "off");
        return;
      }
      scheduleReconnect(opened ? "Connection lost" : "Cannot connect", e.code);
    };
  }

  function scheduleReconnect(what, code) {
    state.attempts += 1;
    var base = Math.min(30, 0.5 * Math.pow(2, state.attempts - 1));
    var delay = base * (0.8 + Math.random() * 0.4);
    var until = Date.now() + delay * 1000;
    var show = function () {
      var left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      setStatus(what + " (code " + code + "). Reconnecting in " + left + " s, attempt " +
                state.attempts + "…", "retry");
    };
    show();
    state.countdownTimer = setInterval(show, 500);
    state.reconnectTimer = setTimeout(function () {
      clearInterval(state.countdownTimer);
      connect();
    }, delay * 1000);
  }

  function stopAll() {
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    clearInterval(state.statsTimer);
    clearInterval(state.metricTimer);
    clearInterval(state.rateTimer);
    if (state.ws) { var ws = state.ws; state.ws = null; ws.close(1000, "bye"); }
  }

  // Activity: any use of the page counts, sent at most every 30 s.
  function onActivity() {
    var now = Date.now();
    if (now - state.lastActive < 30000) { return; }
    state.lastActive = now;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ action: "active" }));
    }
  }
  ["mousemove", "keydown", "click", "scroll", "touchstart"].forEach(function (name) {
    window.addEventListener(name, onActivity, { passive: true });
  });

  // -- events -----------------------------------------------------------
  function minuteOf(epochSeconds) { return Math.floor(epochSeconds / 60) * 60; }

  function addType(type) {
    if (state.types.has(type)) { return; }
    state.types.add(type);
    var select = $("type-filter");
    var option = document.createElement("option");
    option.value = type;
    option.textContent = type;
    select.appendChild(option);
  }

  function onEvent(event) {
    addType(event.type);
    var ts = Date.parse(event.timestamp) / 1000;
    if (!isFinite(ts)) { ts = Date.now() / 1000; }
    var perType = state.live.get(event.type);
    if (!perType) { perType = new Map(); state.live.set(event.type, perType); }
    var minute = minuteOf(ts);
    perType.set(minute, (perType.get(minute) || 0) + 1);
    state.feed.unshift(event);
    if (state.feed.length > FEED_MAX) { state.feed.length = FEED_MAX; }
    if (!state.paused) { scheduleFeed(); }
    scheduleRate();
  }

  var feedQueued = false;
  function scheduleFeed() {
    if (feedQueued) { return; }
    feedQueued = true;
    requestAnimationFrame(function () { feedQueued = false; renderFeed(); });
  }

  function renderFeed() {
    var filter = $("type-filter").value;
    var list = $("feed");
    var rows = document.createDocumentFragment();
    var shown = 0;
    for (var i = 0; i < state.feed.length && shown < 200; i++) {
      var e = state.feed[i];
      if (filter && e.type !== filter) { continue; }
      shown += 1;
      var li = document.createElement("li");
      li.className = "event";
      li.dataset.type = e.type;
      [[new Date(e.timestamp).toLocaleTimeString(), "time"], [e.type, "type"],
       [e.userId || e.anonymousId || "", "user"],
       [JSON.stringify(e.properties || {}), "props"]].forEach(function (cell) {
        var span = document.createElement("span");
        span.className = cell[1];
        span.textContent = cell[0];  // text only: event fields are never HTML
        li.appendChild(span);
      });
      rows.appendChild(li);
    }
    list.replaceChildren(rows);
    $("feed-count").textContent = "(" + shown + " shown, " + state.received + " messages received" +
      (state.reconnects ? ", " + state.reconnects + " reconnects" : "") + ")";
  }

  // -- events per minute chart -----------------------------------------
  var rateQueued = false;
  function scheduleRate() {
    if (rateQueued) { return; }
    rateQueued = true;
    setTimeout(function () { rateQueued = false; renderRate(); }, 250);
  }

  function rateData() {
    var now = minuteOf(Date.now() / 1000);
    var xs = [];
    for (var m = now - (WINDOW_MINUTES - 1) * 60; m <= now; m += 60) { xs.push(m); }
    // Only the types that have events in the window: a line per type.
    var types = Array.from(state.types).sort().filter(function (type) {
      var has = function (m) { return m && xs.some(function (x) { return m.get(x) > 0; }); };
      return has(state.live.get(type)) || has(state.backfill.get(type));
    });
    var data = [xs];
    types.forEach(function (type) {
      var live = state.live.get(type) || new Map();
      var back = state.backfill.get(type) || new Map();
      data.push(xs.map(function (x) {
        // Before this connection: the server's counts when it has them.
        var v = x < state.liveFrom && back.has(x) ? back.get(x) : (live.get(x) || 0);
        return v;
      }));
    });
    return { types: types, data: data };
  }

  function chartWidth(el) { return Math.max(300, el.clientWidth || 600); }

  function renderRate() {
    renderFigures(state.lastStats);  // keeps "this page" figures current
    var el = $("rate-chart");
    var rd = rateData();
    if (!rd.types.length) {
      $("rate-note").textContent = "No events in the last " + WINDOW_MINUTES + " minutes yet. " + state.rateNote;
      return;
    }
    $("rate-note").textContent = state.rateNote;
    var signature = rd.types.join(",");
    if (!charts.rate || charts.rateTypes !== signature) {
      if (charts.rate) { charts.rate.destroy(); }
      var series = [{}].concat(rd.types.map(function (type, i) {
        return { label: type, stroke: COLORS[i % COLORS.length], width: 2,
                 points: { show: true, size: 4 } };
      }));
      charts.rate = new uPlot({
        width: chartWidth(el), height: 240, series: series,
        scales: { x: { time: true } },
        axes: [{}, { label: "events / min" }]
      }, rd.data, el);
      charts.rateTypes = signature;
    } else {
      charts.rate.setData(rd.data);
    }
  }

  function pointsOf(body) {
    var points = [];
    (body.series || []).forEach(function (s) {
      (s.points || []).forEach(function (p) {
        var t = typeof p[0] === "string" ? Date.parse(p[0]) / 1000 : p[0];
        if (t > 1e12) { t = t / 1000; }
        points.push([t, p[1]]);
      });
    });
    return points;
  }

  function backfillRates() {
    var start = Math.floor(Date.now() / 1000) - WINDOW_MINUTES * 60;
    api("/v1/event-types").then(function (r) { return r.ok ? r.json() : { eventTypes: [] }; })
      .then(function (body) {
        var types = (body.eventTypes || []).map(function (t) { return t.name; });
        types.forEach(addType);
        var missing = 0;
        return Promise.all(types.map(function (type) {
          return api("/v1/metrics/events." + encodeURIComponent(type) + "?agg=count&bucket=60&start=" + start)
            .then(function (r) {
              if (!r.ok) { missing += 1; return null; }
              return r.json().then(function (b) {
                var m = new Map();
                pointsOf(b).forEach(function (p) { m.set(minuteOf(p[0]), (m.get(minuteOf(p[0])) || 0) + p[1]); });
                state.backfill.set(type, m);
              });
            }).catch(function () { missing += 1; });
        })).then(function () {
          state.rateNote = missing === types.length && types.length
            ? "History unavailable (no per-type metrics); counting events from " +
              new Date(state.liveFrom * 1000).toLocaleTimeString() + " on."
            : "Counts before " + new Date(state.liveFrom * 1000).toLocaleTimeString() +
              " come from the metrics API; after, from the live stream.";
          renderRate();
        });
      }).catch(function () { $("rate-note").textContent = "Could not load event types."; });
  }

  // -- metric percentiles -------------------------------------------------
  function onMetric(data) {
    if (data && data.name && !state.metricNames.has(data.name)) {
      state.metricNames.add(data.name);
      var option = document.createElement("option");
      option.value = data.name;
      $("metric-names").appendChild(option);
    }
    if (data && data.name === state.chosenMetric && Date.now() - state.lastMetricRefresh > 5000) {
      loadMetric();
    }
  }

  function loadMetric() {
    var name = state.chosenMetric;
    if (!name) { return; }
    state.lastMetricRefresh = Date.now();
    var now = Math.floor(Date.now() / 1000);
    var start = now - WINDOW_MINUTES * 60;
    var aggs = ["p50", "p95", "p99"];
    var percentiles = Promise.all(aggs.map(function (agg) {
      return api("/v1/metrics/" + encodeURIComponent(name) + "?agg=" + agg + "&bucket=60&start=" + start)
        .then(function (r) { return r.ok ? r.json().then(pointsOf) : Promise.reject(r.status); });
    }));
    Promise.all([percentiles, loadAnomalies(name, start, now + 60)]).then(function (results) {
      if (name !== state.chosenMetric) { return; }  // another metric was chosen meanwhile
      state.metricLists = results[0];
      if (results[1]) { state.anomalies = mergeAnomalies(results[1], state.anomalies, start); }
      drawMetric();
      var xs = charts.metric ? charts.metric.data[0] : [];
      $("metric-note").textContent = xs.length ? "Per minute, last " + WINDOW_MINUTES + " minutes; refreshed every 15 s."
        : "No samples of " + name + " in the last " + WINDOW_MINUTES + " minutes.";
      renderAnomalies();
    }).catch(function (status) {
      $("metric-note").textContent = "n/a: " + (status === 404 ? "no such metric, or the metrics API is not available"
        : "could not load (" + status + ")");
    });
  }

  // The anomalies of `name` in [start, end) (epoch s), or null when they
  // cannot be had (the note says why; the chart is drawn without them).
  function loadAnomalies(name, start, end) {
    if (state.anomaliesRefused) { return Promise.resolve(null); }
    return api("/v1/metrics/" + encodeURIComponent(name) + "/anomalies?start=" + start + "&end=" + end)
      .then(function (r) {
        if (r.ok) {
          return r.json().then(function (body) { state.anomalyProblem = ""; return body.anomalies || []; });
        }
        // 403: a user-scoped key (anomalies are per series). It will not
        // change: stop asking (each refusal is an audit entry).
        if (r.status === 403) { state.anomaliesRefused = true; }
        state.anomalyProblem = r.status === 403 ? "not available to a user-scoped key"
          : r.status === 404 ? "not available on this server" : "could not be loaded (" + r.status + ")";
        return null;
      }, function () { state.anomalyProblem = "could not be loaded"; return null; });
  }

  function anomalyKey(a) { return a.bucket + "|" + JSON.stringify(a.tags || {}); }

  // `loaded` (the server's answer) plus the live ones it does not hold yet,
  // those in the window only, oldest first.
  function mergeAnomalies(loaded, known, since) {
    var byKey = new Map();
    known.concat(loaded).forEach(function (a) {
      if (a.bucket >= since) { byKey.set(anomalyKey(a), a); }
    });
    var list = Array.from(byKey.values()).sort(function (a, b) { return a.bucket - b.bucket; });
    return list.slice(-ANOMALIES_MAX);
  }

  function onAnomaly(data) {
    if (!data || data.name !== state.chosenMetric || typeof data.bucket !== "number") { return; }
    var since = Math.floor(Date.now() / 1000) - WINDOW_MINUTES * 60;
    var before = state.anomalies.length;
    state.anomalies = mergeAnomalies([data], state.anomalies, since);
    if (state.anomalies.length === before) { return; }  // already shown, or out of the window
    state.liveAnomalies += 1;
    drawMetric();
    renderAnomalies();
  }

  // The chart: p50/p95/p99 lines, the anomalies as markers (their bucket
  // mean) and the expected band at each anomaly's bucket. The two "expected"
  // series draw nothing themselves: they give the band's ends a place in the
  // y range and in the legend.
  function drawMetric() {
    var lists = state.metricLists;
    if (!lists) { return; }
    var el = $("metric-chart");
    var since = Math.floor(Date.now() / 1000) - WINDOW_MINUTES * 60;
    var shown = state.anomalies.filter(function (a) { return a.bucket >= since; });
    var xs = Array.from(new Set([].concat.apply([], lists.map(function (l) {
      return l.map(function (p) { return p[0]; });
    })).concat(shown.map(function (a) { return a.bucket; })))).sort(function (a, b) { return a - b; });
    var data = [xs].concat(lists.map(function (l) {
      var m = new Map(l);
      return xs.map(function (x) { return m.has(x) ? m.get(x) : null; });
    }));
    var at = new Map();
    shown.forEach(function (a) {
      var prev = at.get(a.bucket);  // several series: the highest score's marker
      if (!prev || a.score > prev.score) { at.set(a.bucket, a); }
    });
    ["value", "lower", "upper"].forEach(function (field) {
      data.push(xs.map(function (x) { return at.has(x) ? at.get(x)[field] : null; }));
    });
    var none = function () { return null; };
    if (charts.metric) { charts.metric.destroy(); }
    charts.metric = new uPlot({
      width: chartWidth(el), height: 240,
      series: [{}].concat(["p50", "p95", "p99"].map(function (agg, i) {
        return { label: agg, stroke: COLORS[i], width: 2, spanGaps: true };
      })).concat([
        { label: "anomaly", stroke: ANOMALY_COLOR, paths: none,
          points: { show: true, size: 13, width: 2, stroke: "#fff", fill: ANOMALY_COLOR } },
        { label: "expected low", stroke: BAND_FILL, paths: none, points: { show: false } },
        { label: "expected high", stroke: BAND_FILL, paths: none, points: { show: false } }
      ]),
      scales: { x: { time: true } }, axes: [{}, { label: state.chosenMetric }],
      hooks: { drawAxes: [function (u) { drawBands(u, shown); }] }
    }, data, el);
    el.dataset.anomalies = String(shown.length);
  }

  // Behind the lines (drawn with the axes): each anomaly's expected range,
  // a bucket wide (at least 12 px), centred on its bucket.
  function drawBands(u, shown) {
    var ctx = u.ctx;
    var ratio = window.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    ctx.fillStyle = BAND_FILL;
    var drawn = 0;
    shown.forEach(function (a) {
      if (typeof a.lower !== "number" || typeof a.upper !== "number") { return; }
      var x0 = u.valToPos(a.bucket, "x", true);
      var x1 = u.valToPos(a.bucket + (a.resolution || 60), "x", true);
      var half = Math.max(6 * ratio, (x1 - x0) / 2);
      var top = u.valToPos(a.upper, "y", true);
      var bottom = u.valToPos(a.lower, "y", true);
      ctx.fillRect(x0 - half, top, 2 * half, Math.max(1, bottom - top));
      drawn += 1;
    });
    ctx.restore();
    u.root.parentNode.dataset.bands = String(drawn);
  }

  function tagsText(tags) {
    var names = Object.keys(tags || {}).sort();
    return names.length ? names.map(function (k) { return k + "=" + tags[k]; }).join(", ") : "all";
  }

  function number(v) {
    if (typeof v !== "number" || !isFinite(v)) { return "n/a"; }
    var a = Math.abs(v);
    return a !== 0 && (a >= 1e6 || a < 0.01) ? v.toPrecision(3) : (Math.round(v * 100) / 100).toLocaleString();
  }

  // The markers' text alternative: one row per anomaly, newest first.
  function renderAnomalies() {
    var since = Math.floor(Date.now() / 1000) - WINDOW_MINUTES * 60;
    var shown = state.anomalies.filter(function (a) { return a.bucket >= since; }).slice().reverse();
    var rows = document.createDocumentFragment();
    shown.forEach(function (a) {
      var tr = document.createElement("tr");
      tr.className = "anomaly";
      tr.dataset.bucket = String(a.bucket);
      [new Date(a.bucket * 1000).toLocaleTimeString(), tagsText(a.tags), number(a.value),
       number(a.lower) + " to " + number(a.upper), number(a.score)].forEach(function (text) {
        var td = document.createElement("td");
        td.textContent = text;  // text only: tags are never HTML
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    $("anomaly-rows").replaceChildren(rows);
    $("anomalies").hidden = !shown.length;
    var note = $("anomaly-note");
    if (!state.chosenMetric) { note.textContent = ""; return; }
    if (state.anomalyProblem && !shown.length) {
      note.textContent = "Anomalies n/a: " + state.anomalyProblem + ".";
    } else {
      note.textContent = shown.length
        ? shown.length + (shown.length === 1 ? " anomaly" : " anomalies") + " of " + state.chosenMetric +
          " in the last " + WINDOW_MINUTES + " minutes (marked on the chart, expected range shaded)."
        : "No anomalies of " + state.chosenMetric + " in the last " + WINDOW_MINUTES + " minutes.";
    }
  }

  // -- system figures -----------------------------------------------------
  // The headline: the few figures an operator watches, from /v1/stats. The
  // "in" rate is queue entries (one per ingest request and lane) added per
  // second, from the difference between two polls.
  var TILES = [
    ["in", "requests/s in"], ["processed", "events/s processed"], ["depth", "queue depth"],
    ["lag", "queue lag"], ["workers", "workers alive"], ["errors", "errors/s"],
    ["clients", "WebSocket clients"], ["memory", "Redis memory"]
  ];

  function humanBytes(n) {
    if (typeof n !== "number") { return "n/a"; }
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function humanSeconds(s) {
    if (typeof s !== "number") { return "n/a"; }
    if (s < 1) { return Math.round(s * 1000) + " ms"; }
    if (s < 120) { return s.toFixed(1) + " s"; }
    if (s < 7200) { return Math.round(s / 60) + " min"; }
    return (s / 3600).toFixed(1) + " h";
  }

  function humanRate(r) { return typeof r === "number" ? (r < 10 ? r.toFixed(2) : Math.round(r).toLocaleString()) : "n/a"; }

  function headline(stats) {
    var q = (stats && stats.queue) || {};
    var prev = state.prevStats;
    var inRate = null;
    if (prev && prev.queue && typeof q.entries_added === "number" && stats.time > prev.time) {
      inRate = Math.max(0, q.entries_added - prev.queue.entries_added) / (stats.time - prev.time);
    }
    var workers = stats && Array.isArray(stats.workers) ? stats.workers : null;
    return {
      in: inRate === null ? "…" : humanRate(inRate),
      processed: humanRate(q.rate_per_second),
      depth: typeof q.length === "number" ? (q.length + (q.pending || 0)).toLocaleString() : "n/a",
      lag: humanSeconds(q.lag_seconds),
      workers: workers ? String(workers.filter(function (w) { return w.status === "alive"; }).length) : "n/a",
      errors: humanRate(q.error_rate_per_second),
      clients: stats && stats.websocket ? String(stats.websocket.clients || 0) : "n/a",
      memory: stats && stats.redis ? humanBytes(stats.redis.used_memory_bytes) : "n/a"
    };
  }

  function renderHeadline(stats) {
    var values = headline(stats);
    var out = document.createDocumentFragment();
    TILES.forEach(function (tile) {
      var box = document.createElement("div");
      box.className = "tile";
      box.dataset.figure = tile[0];
      var dt = document.createElement("dt"); dt.textContent = tile[1];
      var dd = document.createElement("dd"); dd.textContent = values[tile[0]];
      box.appendChild(dt); box.appendChild(dd);
      out.appendChild(box);
    });
    $("tiles").replaceChildren(out);
  }

  // A figure's value as a person reads it: times as dates or ages, bytes
  // in KB/MB, rates with their unit; names without underscores.
  function humanValue(name, v) {
    if (v === null || v === undefined) { return "n/a"; }
    if (typeof v !== "number") { return String(v); }
    if (/bytes$/.test(name)) { return humanBytes(v); }
    if (/(^|\.)(time|last_run|last_seen)$/.test(name) && v > 1e9) { return new Date(v * 1000).toLocaleString(); }
    if (/seconds|duration/.test(name)) { return humanSeconds(v); }
    if (/_ms(_|$)/.test(name)) { return (Math.round(v * 100) / 100) + " ms"; }
    if (/rate/.test(name)) { return humanRate(v) + " /s"; }
    return (Math.round(v * 100) / 100).toLocaleString();
  }

  function renderFigures(stats) {
    state.lastStats = stats;
    var box = $("figures");
    var out = document.createDocumentFragment();
    Object.keys(stats || {}).filter(function (g) { return g !== "time"; }).forEach(function (group) {
      var title = document.createElement("h3");
      title.className = "group";
      title.textContent = group.replace(/_/g, " ");
      out.appendChild(title);
      var rows = [];
      (function flatten(prefix, v) {
        if (v !== null && typeof v === "object" && !Array.isArray(v)) {
          Object.keys(v).forEach(function (k) { flatten(prefix ? prefix + "." + k : k, v[k]); });
        } else if (Array.isArray(v) && v.length && typeof v[0] === "object") {
          v.forEach(function (item, i) {
            flatten((prefix ? prefix + "." : "") + (item && item.name ? item.name : String(i)), item);
          });
        } else {
          rows.push([prefix || group, humanValue(prefix || group, v)]);
        }
      })("", stats[group]);
      rows.forEach(function (row) {
        var div = document.createElement("div");
        div.className = "row";
        var a = document.createElement("span"); a.textContent = row[0].replace(/_/g, " ");
        var b = document.createElement("span"); b.textContent = row[1];
        div.appendChild(a); div.appendChild(b);
        out.appendChild(div);
      });
    });
    var mine = document.createElement("h3");
    mine.className = "group";
    mine.textContent = "this page";
    out.appendChild(mine);
    [["messages received", state.received], ["reconnects", state.reconnects]].forEach(function (row) {
      var div = document.createElement("div");
      div.className = "row";
      var a = document.createElement("span"); a.textContent = row[0];
      var b = document.createElement("span"); b.textContent = String(row[1]);
      div.appendChild(a); div.appendChild(b);
      out.appendChild(div);
    });
    box.replaceChildren(out);
  }

  function loadStats() {
    api("/v1/stats").then(function (r) {
      if (!r.ok) { throw r.status; }
      return r.json();
    }).then(function (stats) {
      renderHeadline(stats);
      renderFigures(stats);
      state.prevStats = stats;
      $("figures-note").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    }).catch(function (status) {
      renderHeadline(null);
      renderFigures(null);
      // 403: a user-scoped key (the figures are the whole service's). It
      // will not change: stop asking (each refusal is an audit entry).
      if (status === 403) { clearInterval(state.statsTimer); }
      $("figures-note").textContent = "System figures n/a: /v1/stats " +
        (status === 404 ? "is not available on this server"
          : status === 403 ? "is not available to a user-scoped key" : "could not be loaded") + ".";
    });
  }

  // -- start ----------------------------------------------------------------
  function start() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = false;
    $("login-error").hidden = true;
    renderHeadline(null);
    renderFigures(null);
    loadStats();
    state.statsTimer = setInterval(loadStats, 5000);
    state.rateTimer = setInterval(renderRate, 10000);  // move the time axis along
    state.metricTimer = setInterval(loadMetric, 15000);
    state.lastActive = Date.now();
    connect();
  }

  $("login-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var key = $("key").value.trim();
    if (!key) { return; }
    sessionStorage.setItem(KEY_NAME, key);
    $("key").value = "";
    start();
  });
  $("forget").addEventListener("click", function () {
    forgetKey("");
    setStatus("Not connected", "idle");
  });
  $("type-filter").addEventListener("change", renderFeed);
  $("pause").addEventListener("click", function () {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    if (!state.paused) { renderFeed(); }
  });
  $("metric-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var chosen = $("metric-name").value.trim();
    if (chosen !== state.chosenMetric) {
      state.anomalies = [];
      state.metricLists = null;
    }
    state.chosenMetric = chosen;
    loadMetric();
  });

  if (getKey()) { start(); } else { $("key").focus(); }
})();
