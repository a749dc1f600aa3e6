// analytics.js (@segment/analytics-next) as a page loads it: settings from
// the service (cdnURL), then identify, track and page. `batching` sends the
// calls to /v1/b together instead of one request each.
import { AnalyticsBrowser } from "@segment/analytics-next";

window.runSegment = async (writeKey, host, batching) => {
  const options = batching
    ? { integrations: { "Segment.io": { deliveryStrategy: { strategy: "batching", config: { size: 3, timeout: 200 } } } } }
    : {};
  const [analytics] = await AnalyticsBrowser.load({ writeKey, cdnURL: host }, options);
  const sent = [
    analytics.identify("u-1", { plan: "pro", email: "u1@example.org" }),
    analytics.track("Order Completed", { amount: 42 }),
    analytics.page("Docs", "Getting started", { path: "/docs" }),
  ];
  const contexts = await Promise.all(sent);
  return contexts.map((ctx) => ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : "delivered");
};
