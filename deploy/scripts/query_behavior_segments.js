// The questions growth teams ask, as mongosh queries (FerretDB 1.24 and MongoDB 7 compatible:
// find, countDocuments, $match/$group/$sum/$sort only).
// "Last hour" and "last 24 h" are of event time, up to the latest session the job wrote: the same
// questions answer for live traffic and for replayed history (the demo's sessions end hours ago).
const latest = db.user_behavior_segments.find({}, { session_end: 1 }).sort({ session_end: -1 }).limit(1).toArray();
const until = latest.length ? latest[0].session_end : new Date();
const hourAgo = new Date(until.getTime() - 3600 * 1000);
const dayAgo = new Date(until.getTime() - 24 * 3600 * 1000);
print(`(event time up to ${until.toISOString()})\n`);

print("== sessions per segment ==");
db.user_behavior_segments.aggregate([
  { $group: { _id: { segment: "$behavior_segment", status: "$status" }, sessions: { $sum: 1 } } },
  { $sort: { "_id.segment": 1, "_id.status": 1 } },
]).forEach(r => print(`${r._id.segment.padEnd(16)} ${r._id.status.padEnd(7)} ${r.sessions}`));

print("\n== browsers with a cart in the last hour of event time (abandoned-cart emails) ==");
db.user_behavior_segments.find(
  { behavior_segment: "browser", cart_count: { $gte: 1 }, session_end: { $gte: hourAgo } },
  { user_id: 1, cart_count: 1, session_end: 1, recommendations: 1 },
).sort({ session_end: -1 }).limit(20).forEach(d => print(`${d._id}  user ${d.user_id}  carts ${d.cart_count}  ended ${d.session_end.toISOString()}`));

print("\n== power users with total_amount >= 1000 (VIP perks) ==");
db.user_behavior_segments.find(
  { behavior_segment: "power_user", total_amount: { $gte: 1000 } },
  { user_id: 1, total_amount: 1, total_events: 1 },
).sort({ total_amount: -1 }).limit(20).forEach(d => print(`${d._id}  user ${d.user_id}  spent ${d.total_amount}  events ${d.total_events}`));

print("\n== conversion funnel (closed sessions) ==");
db.conversion_funnel.find({}, { _id: 0, run_id: 0, batch_id: 0 }).sort({ total_sessions: -1 }).forEach(d => printjson(d));

print("\n== segment distribution over the last 24 h of event time (5-minute windows, by session end) ==");
db.segment_distribution.find({ window_start: { $gte: dayAgo } }).sort({ window_start: -1, behavior_segment: 1 }).limit(48)
  .forEach(d => print(`${d.window_start.toISOString()}  ${d.behavior_segment.padEnd(16)} ${String(d.session_count).padStart(5)}  ${d.share_pct}%`));

print("\n== top users by intent (user_profiles; recency computed now) ==");
db.user_profiles.find({}, { sessions: 1, intent_score: 1, conversion_probability: 1, behavior_pattern: 1, last_seen: 1 })
  .sort({ intent_score: -1, _id: 1 }).limit(10)
  .forEach(d => print(`user ${String(d._id).padEnd(10)} intent ${String(d.intent_score).padStart(3)}  convert ${String(d.conversion_probability).padStart(3)}  ${d.behavior_pattern.padEnd(18)} sessions ${d.sessions}  recency ${((Date.now() - d.last_seen) / 86400000).toFixed(1)} d`));

print("\n== at-risk users (win-back) ==");
db.user_profiles.find({ behavior_pattern: "at_risk" }, { sessions: 1, last_segment: 1, last_seen: 1 })
  .sort({ last_seen: -1 }).limit(10)
  .forEach(d => print(`user ${String(d._id).padEnd(10)} sessions ${d.sessions}  last ${d.last_segment}  seen ${d.last_seen.toISOString()}`));

print("\n== high-severity alerts (fraud review) ==");
db.behavior_alerts.find({ severity: "high" }).sort({ first_event_time: -1 }).limit(20)
  .forEach(d => print(`${d.alert_type.padEnd(15)} user ${String(d.user_id).padEnd(10)} ${d.first_event_time.toISOString()}  ${JSON.stringify(d.evidence)}`));

print("\n== actions fired, latest first (trigger_executions; also on the behavior_actions topic) ==");
db.trigger_executions.aggregate([{ $group: { _id: "$trigger", fired: { $sum: 1 } } }, { $sort: { _id: 1 } }])
  .forEach(r => print(`${r._id.padEnd(22)} ${r.fired}`));
db.trigger_executions.find({}, { trigger: 1, user_id: 1, event_time: 1, actions: 1 }).sort({ event_time: -1 }).limit(10)
  .forEach(d => print(`${d.event_time.toISOString()}  ${d.trigger.padEnd(22)} user ${String(d.user_id).padEnd(10)} -> ${d.actions.map(a => a.channel + "/" + a.template).join(", ")}`));

print("\n== experiments (experiment_results: rate, 95% interval, lift vs control, p-value) ==");
db.experiment_results.find().sort({ experiment: 1, is_control: -1, variant: 1 })
  .forEach(d => print(`${d.experiment.padEnd(16)} ${d.variant.padEnd(16)} exposed ${String(d.exposed_sessions).padStart(6)}  ` +
    (d.conversion_rate === null ? "-" : `${(100 * d.conversion_rate).toFixed(1)}% [${(100 * d.ci95_low).toFixed(1)}, ${(100 * d.ci95_high).toFixed(1)}]`) +
    (d.is_control ? "  control" : d.lift_abs === null ? "" : `  lift ${(100 * d.lift_abs).toFixed(1)} pts  p=${d.p_value === null ? "-" : d.p_value.toPrecision(3)}${d.significant ? " significant" : ""}`) +
    (d.sample_ratio_mismatch ? "  SAMPLE RATIO MISMATCH" : "")));

print("\n== most frequent event paths of closed sessions (session_paths) ==");
// Summed here, not with $group: FerretDB 1.24 returns 0 for every $sum of a $group but the first.
const paths = {};
db.session_paths.find().forEach(d => {
  const p = paths[d.event_path] || (paths[d.event_path] = { sessions: 0, conversions: 0 });
  p.sessions += d.sessions; p.conversions += d.conversions;
});
Object.entries(paths).sort((a, b) => b[1].sessions - a[1].sessions || a[0].localeCompare(b[0])).slice(0, 10)
  .forEach(([path, p]) => print(`${String(p.sessions).padStart(6)} sessions  ${String(p.conversions).padStart(5)} bought  ${path}`));

print("\n== events per hour of event time (event_counts_hourly) ==");
db.event_counts_hourly.aggregate([{ $match: { hour: { $gte: dayAgo } } }, { $group: { _id: "$hour", events: { $sum: "$events" } } },
  { $sort: { _id: -1 } }, { $limit: 24 }])
  .forEach(r => print(`${r._id.toISOString()}  ${String(r.events).padStart(7)}`));

print("\n== weekly retention cohorts (retention_cohorts: users with a closed session in week k) ==");
db.retention_cohorts.find().sort({ cohort_week: -1, week: 1 }).limit(40)
  .forEach(d => print(`${d.cohort_week}  week ${String(d.week).padStart(2)}  ${String(d.users).padStart(6)} users`));
