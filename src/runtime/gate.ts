// The gate after a bake: whether the new version goes live, which items it holds, and what
// becomes of each item. A pure function of the bake's probe scores, so the rules that keep the
// ledger honest ("absorbed" means the live weights hold it) are tested on their own.
import type { Item, ItemStatus } from "../knowledge/ledger.js";
import type { AgentConfig } from "./agent-config.js";

/** How an item's history records a promoted bake that did not absorb it (bake.maxAttempts counts these). */
export const NOT_ABSORBED = "not absorbed by";

export interface GateInput {
  version: string;
  /** new items baked (pending ones; in a consolidation, everything still true) */
  fresh: Item[];
  /** absorbed items replayed into the bake */
  replay: Item[];
  /** absorbed items the live version holds that were not replayed (scored only) */
  retained: Item[];
  /** new items left out of the bake: no checked probe could be written */
  unprobed: Item[];
  /** the live version's items before the bake */
  liveItems: ReadonlySet<string>;
  /** items that must not be held: retracted or rejected */
  excluded: ReadonlySet<string>;
  /** unprompted probe score per item id on the new weights */
  scores: Readonly<Record<string, { unprompted: number }>>;
  /** older items newer ones replace (news updates), found by this bake */
  superseded: readonly { id: string; by: string; question: string; answer: string }[];
  /** persona adherence on the new weights, when the agent has a persona */
  persona: number | null;
  consolidate: boolean;
  /** false when the worker trained nothing (every new item unprobed or older news): there is no version to promote */
  trained?: boolean;
  gate: AgentConfig["gate"];
  maxAttempts: number;
}

export interface StatusChange {
  ids: string[];
  status: ItemStatus;
  reason?: string;
  /** the version that absorbed the items (status absorbed) */
  version?: string;
  /** the item that supersedes them (status superseded) */
  by?: string;
}

export interface GateDecision {
  promoted: boolean;
  reasons: string[];
  absorption: number;
  retention: number;
  persona: number | null;
  /** the items the new version holds */
  holds: string[];
  /** item status changes, in order */
  changes: StatusChange[];
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 1;
}

/** A score shown beside the bar it missed: two decimals, more where two would round up to the bar (0.597, not "0.60 < 0.6"). */
function below(x: number, bar: number): string {
  let digits = 2;
  while (digits < 6 && Number(x.toFixed(digits)) >= bar) digits++;
  return x.toFixed(digits);
}

export function decideGate(input: GateInput): GateDecision {
  const score = (id: string) => input.scores[id]?.unprompted ?? 0;
  const held = (id: string) => score(id) >= input.gate.itemPass;
  // The bake left out every item it found replaced (bake/cycle.ts): none is new learning. A
  // supersession takes effect once the weights going live answer the newest news of its chain
  // ("dog" by "cat" by "owl": "owl"); until then the older item is what they know.
  const successor = new Map(input.superseded.map((s) => [s.id, s.by]));
  const newest = (id: string) => {
    for (const seen = new Set<string>(); successor.has(id) && !seen.has(id); id = successor.get(id)!) seen.add(id);
    return id;
  };
  const carried = (id: string) => input.liveItems.has(id) && !input.excluded.has(id);
  // what the new weights answer: what they were scored on, else what the live version carries over
  const learned = (id: string) => (id in input.scores ? held(id) : carried(id));
  const replaced = new Set(successor.keys());
  const supersededIfPromoted = new Set([...replaced].filter((id) => learned(newest(id))));
  const without = (out: ReadonlySet<string>) => (items: Item[]) => items.filter((i) => !out.has(i.id));
  const g = {
    ...input,
    fresh: without(replaced)(input.fresh),
    // an older item its news does not replace yet is kept knowledge: its loss is a retention loss
    kept: without(supersededIfPromoted)([...input.replay, ...input.retained]),
    excluded: new Set([...input.excluded, ...replaced]),
  };
  const passes = (i: Item) => held(i.id);
  const absorption = mean(g.fresh.map((i) => score(i.id)));
  const retention = mean(g.kept.map((i) => score(i.id)));
  const reasons: string[] = [];
  // a bake that could learn none of its new items only replayed old ones: nothing to promote
  if (g.unprobed.length && !g.fresh.length) reasons.push(`none of the ${g.unprobed.length} new item(s) got a checked probe, so none was baked`);
  if (g.fresh.length && absorption < g.gate.minAbsorption) reasons.push(`absorption ${below(absorption, g.gate.minAbsorption)} < gate.minAbsorption ${g.gate.minAbsorption}`);
  if (g.kept.length && retention < g.gate.minRetention) reasons.push(`retention ${below(retention, g.gate.minRetention)} < gate.minRetention ${g.gate.minRetention}`);
  if (g.persona !== null && g.persona < g.gate.minPersona) reasons.push(`persona adherence ${below(g.persona, g.gate.minPersona)} < gate.minPersona ${g.gate.minPersona}`);
  // Without an adapter nothing goes live, whatever the numbers say: a held item found replaced
  // must stay absorbed (the live weights still hold it), as when a version is rejected.
  if (g.trained === false && !reasons.length) reasons.push("nothing new to learn: every new item is older news than an item the agent holds");
  const promoted = reasons.length === 0;

  // what the live version held and this bake did not score is carried over, except what it decides
  // itself (new items) and what must not be held (retracted, rejected, found replaced)
  const decided = new Set([...input.replay, ...input.retained, ...g.fresh, ...g.unprobed].map((i) => i.id));
  // An item found replaced is listed while the new weights answer it, superseded or not: a
  // version's items are what its weights know, so a retraction of it rebuilds and a rollback check sees it.
  const stillAnswered = [...replaced].filter(held);
  const holds = g.consolidate
    ? [...g.fresh.filter(passes).map((i) => i.id), ...stillAnswered]
    : [...new Set([...[...g.liveItems].filter((id) => !decided.has(id) && !g.excluded.has(id)), ...[...g.kept, ...g.fresh].filter((i) => !replaced.has(i.id) && passes(i)).map((i) => i.id), ...stillAnswered])];

  const ids = (items: Item[]) => items.map((i) => i.id);
  const changes: StatusChange[] = [
    {
      ids: ids(g.unprobed),
      status: "rejected",
      reason: "not baked: none of the questions the model wrote about it was answered from it with the item in the prompt, so nothing could show it was learned (reword it and add it again)",
    },
  ];
  if (g.consolidate) {
    if (promoted) {
      changes.push({ ids: ids(g.fresh.filter(passes)), status: "absorbed", version: g.version, reason: "consolidated" });
      changes.push({ ids: ids(g.fresh.filter((i) => !passes(i))), status: "pending", reason: `not recovered by consolidation ${g.version}` });
    }
  } else if (!promoted) {
    changes.push({ ids: ids(g.fresh), status: "pending", reason: `version ${g.version} rejected: ${reasons.join("; ")}` });
  } else {
    const missed = g.fresh.filter((i) => !passes(i));
    // a promoted bake that did not absorb an item is one attempt (since it was last absorbed, if
    // ever); failed or rejected bakes are not
    const since = (i: Item) => i.history.slice(i.history.findLastIndex((h) => h.status === "absorbed") + 1);
    const spent = (i: Item) => since(i).filter((h) => h.reason?.startsWith(NOT_ABSORBED)).length + 1 >= g.maxAttempts;
    const reason = `${NOT_ABSORBED} ${g.version}: probe score below gate.itemPass ${g.gate.itemPass}`;
    changes.push({ ids: ids(g.fresh.filter(passes)), status: "absorbed", version: g.version });
    changes.push({ ids: ids(missed.filter((i) => !spent(i))), status: "pending", reason });
    changes.push({ ids: ids(missed.filter(spent)), status: "rejected", reason: `${reason}, the last of bake.maxAttempts ${g.maxAttempts}` });
    // "absorbed" means the live weights hold it: what the new version lost is learned again
    changes.push({ ids: ids(g.kept.filter((i) => !replaced.has(i.id) && !passes(i))), status: "pending", reason: `lost by ${g.version}: its probes no longer pass without the prompt; baked again next time` });
  }
  // News this decision rejects replaces nothing, but the bake left the older item out all the same.
  const refused = new Set(changes.filter((c) => c.status === "rejected").flatMap((c) => c.ids));
  for (const s of input.superseded) {
    // a rejected version changes nothing the live weights hold
    if (!promoted && g.liveItems.has(s.id)) continue;
    const answered = promoted ? supersededIfPromoted.has(s.id) : carried(newest(s.id));
    if (answered) changes.push({ ids: [s.id], status: "superseded", by: s.by, reason: `superseded by ${s.by}: asked "${s.question}", that item answers "${s.answer}"` });
    else if (refused.has(s.by)) {
      // the new version still answers it (it stays in holds): absorbed there; else learned again
      if (promoted && held(s.id)) changes.push({ ids: [s.id], status: "absorbed", version: g.version, reason: `${s.by}, which would supersede it, was rejected; ${g.version} still holds it` });
      else changes.push({ ids: [s.id], status: "pending", reason: `${s.by}, which would supersede it, was rejected; baked again next time` });
    } else if (!promoted) changes.push({ ids: [s.id], status: "pending", reason: `waits for ${s.by}, which would supersede it: version ${g.version} was rejected` });
    // A held item whose news the new version did not absorb stays what the agent knows: superseded
    // now, it would leave the weights answering neither value while the ledger said the news
    // replaced it (docs/soak.md, defect 6). The news is baked again; the older item too once the
    // news is rejected.
    else if (held(s.id)) changes.push({ ids: [s.id], status: "absorbed", version: g.version, reason: `kept: ${s.by}, which would supersede it, was not absorbed by ${g.version}, which still answers this item; ${s.by} is baked again next time` });
    else if (g.liveItems.has(s.id)) changes.push({ ids: [s.id], status: "pending", reason: `lost by ${g.version}, which answers neither this item nor ${s.by}, the news that would supersede it: ${s.by} is baked again next time, this item once ${s.by} is rejected` });
    else changes.push({ ids: [s.id], status: "pending", reason: `waits for ${s.by}, which would supersede it: not absorbed by ${g.version}, baked again next time` });
  }
  return { promoted, reasons, absorption, retention, persona: g.persona, holds, changes: changes.filter((c) => c.ids.length) };
}
