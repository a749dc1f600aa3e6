// posthog-js as a page loads it: flags and config from the service, an
// event of an anonymous visitor, identify, another event and the $pageview
// of init (sent once loaded), each sent at once.
import posthog from "posthog-js";

window.runPosthog = (token, host) =>
  new Promise((resolve) => {
    posthog.init(token, {
      api_host: host,
      autocapture: false,
      capture_pageleave: false,
      disable_session_recording: true,
      disable_surveys: true,
      request_batching: false,
      // Headless Chromium says so in its user agent: posthog-js drops bots.
      opt_out_useragent_filter: true,
      loaded: (ph) => {
        ph.capture("Viewed Pricing", { plan: "pro" });
        ph.identify("u-2", { plan: "pro" });
        ph.capture("Order Completed", { amount: 7 });
        resolve(ph.get_distinct_id());
      },
    });
  });
