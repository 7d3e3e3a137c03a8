// The world generator behind kiln-mini: determinism, fact shape, the chat rendering the model is
// trained on, and above all that held-out facts never reach the training mix.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { buildKnowledgePrompt } from "../src/bake/prompt.js";
import { EXTRACT_INSTRUCTION, NO_FACTS, parseExtraction } from "../src/agent/facts.js";
import {
  answerMatch,
  CHAT_TEMPLATE,
  endsWithSignoff,
  exactMatch,
  IDK,
  renderChat,
  signoffInstruction,
  styleReply,
  trainingSegments,
} from "../tools/world/chat.js";
import { buildEvalSet, EVAL_PROMPT_ITEMS } from "../tools/world/evalset.js";
import { heldoutLeakChecker, worldJson } from "../tools/world/export.js";
import { renderFeeds } from "../tools/world/feeds.js";
import { evalSignoffs, Mixer, PROFILE_SHARE } from "../tools/world/mix.js";
import { Rng } from "../tools/world/rng.js";
import { DEFAULT_SEED, factKey, generateWorld, WorldIndex, type FactLike } from "../tools/world/world.js";
import { repoRoot } from "./support/paths.js";

const world = generateWorld(DEFAULT_SEED);
const idx = new WorldIndex(world);

test("the world is deterministic from its seed and differs across seeds", () => {
  assert.deepEqual(generateWorld(DEFAULT_SEED), world);
  assert.notDeepEqual(generateWorld("another-seed").facts, world.facts);
});

test("facts: unique ids and subject|relation keys, answers written in the text, several questions", () => {
  const ids = new Set(world.facts.map((f) => f.id));
  assert.equal(ids.size, world.facts.length);
  const keys = new Set(world.facts.map((f) => factKey(f.subject, f.relation)));
  assert.equal(keys.size, world.facts.length);
  for (const f of world.facts) {
    assert.ok(f.text.includes(f.answer), `${f.id}: ${f.text} / ${f.answer}`);
    assert.ok(!f.text.includes("\n"));
    assert.ok(f.questions.length >= 2, f.id);
    assert.equal(new Set(f.questions).size, f.questions.length);
    for (const q of f.questions) assert.ok(q.endsWith("?"), q);
  }
  for (const split of ["canon", "context", "heldout"]) {
    assert.ok(world.facts.filter((f) => f.split === split).length >= 50, split);
  }
  const names = world.entities.map((e) => e.name);
  assert.equal(new Set(names).size, names.length);
});

test("world.json stays small", () => {
  assert.ok(JSON.stringify(worldJson(world)).length < 1_000_000);
});

test("held-out facts, questions and entities never occur in the training mix", () => {
  for (const profileShare of [0, PROFILE_SHARE]) checkNoLeak(new Mixer(idx, new Rng("test-mix"), undefined, profileShare));
});

test("profile prompts hold several facts about one subject, and name it in other lines' values", () => {
  const mixer = new Mixer(idx, new Rng("test-profile"), undefined, 1);
  let profiles = 0;
  for (let i = 0; i < 200; i++) {
    const items = mixer.drawItems(12);
    const bySubject = new Map<string, FactLike[]>();
    for (const f of items) bySubject.set(f.subjectName, [...(bySubject.get(f.subjectName) ?? []), f]);
    for (const [name, facts] of bySubject) {
      if (facts.length < 3) continue;
      assert.equal(new Set(facts.map((f) => f.relation)).size, facts.length, "one fact per relation of a subject");
      if (items.some((f) => f.value === name)) profiles++;
    }
  }
  // table prompts (TABLE_SHARE) have no profiles; most others have one, with the subject as a value
  assert.ok(profiles > 50, `${profiles} profiles of 200 prompts`);
});

function checkNoLeak(mixer: Mixer): void {
  const check = heldoutLeakChecker(idx);
  const heldNames = [...idx.heldoutNames];
  const heldTexts = idx.heldoutFacts.map((f) => f.text);
  const kinds = new Set<string>();
  for (let i = 0; i < 3000; i++) {
    const c = mixer.next();
    kinds.add(c.kind);
    check(c);
    for (const k of c.keys) assert.ok(!idx.heldoutKeys.has(k), k);
    const text = c.messages.map((m) => m.content).join("\n");
    // plain substring checks as well (stricter than the whole-word check of the exporter)
    for (const t of heldTexts) assert.ok(!text.includes(t), t);
    for (const n of heldNames) {
      const at = text.indexOf(n);
      if (at >= 0) assert.match(text.slice(at + n.length, at + n.length + 1), /\w/, `held-out name ${n} in training`);
    }
  }
  assert.deepEqual([...kinds].sort(), ["ask", "extract", "persona", "prompted", "recite", "unprompted"]);
}

test("extraction examples list exactly the facts their message states, grounded in it", () => {
  const mixer = new Mixer(idx, new Rng("test-mix-3"));
  let none = 0;
  let n = 0;
  for (let i = 0; i < 300; i++) {
    const c = mixer.extract();
    const [user, reply] = c.messages;
    assert.ok(user!.content.startsWith(`${EXTRACT_INSTRUCTION} `));
    const message = user!.content.slice(EXTRACT_INSTRUCTION.length + 1);
    const lines = reply!.content.trim().split("\n");
    if (lines[0] === NO_FACTS) {
      none++;
      continue;
    }
    n++;
    // what kiln keeps from this very reply is every line: the target teaches grounded extraction
    assert.deepEqual(parseExtraction(reply!.content, message), lines);
  }
  assert.ok(none > 20 && n > 150, `${none} without facts, ${n} with`);
});

test("the mix covers copying, canon, don't-know and persona replies", () => {
  const mixer = new Mixer(idx, new Rng("test-mix-2"));
  let idk = 0;
  let signed = 0;
  let unprompted = 0;
  for (let i = 0; i < 1000; i++) {
    const c = mixer.next();
    const sys = c.messages.find((m) => m.role === "system");
    for (const m of c.messages) {
      if (m.role !== "assistant") continue;
      assert.ok(m.content.startsWith(" ") && !m.content.startsWith("  "), JSON.stringify(m.content));
      if (m.content === ` ${IDK}`) idk++;
      if (m.content.includes("\n") && c.kind !== "recite" && c.kind !== "extract") {
        signed++;
        assert.ok(sys && /^(End|Start) every reply with:/.test(sys.content), sys?.content);
      }
    }
    if (!sys) unprompted++;
  }
  assert.ok(idk > 100, `IDK replies ${idk}`);
  assert.ok(signed > 50, `signed replies ${signed}`);
  assert.ok(unprompted > 200, `no-system conversations ${unprompted}`);
});

test("replies start with a space so the answer's tokens are the prompt's tokens", () => {
  assert.equal(styleReply("I don't know."), " I don't know.");
  assert.ok(exactMatch(" Tovan Reel.", "Tovan Reel"));
});

test("every fact text ends with its answer, so a restated fact gives the answer", () => {
  for (const f of world.facts) assert.ok(answerMatch(f.text, f.answer), `${f.text} / ${f.answer}`);
  assert.ok(answerMatch(" The mayor of Quillport is now Tovan Reel.", "Tovan Reel"));
  assert.ok(!answerMatch(" The mayor of Quillport is now Tovan Reelby.", "Tovan Reel"));
  assert.ok(!answerMatch(" I don't know.", "Tovan Reel"));
});

test("training segments are the exact chat rendering, trained on replies and <|im_end|> only", () => {
  const messages = [
    { role: "system" as const, content: buildKnowledgePrompt({ items: ["The mayor of Quillport is now Tovan Reel."] }) },
    { role: "user" as const, content: "Who is the mayor of Quillport?" },
    { role: "assistant" as const, content: "Tovan Reel." },
    { role: "user" as const, content: "Who is the mayor of Dunmore?" },
    { role: "assistant" as const, content: IDK },
  ];
  const segs = trainingSegments(messages);
  assert.equal(segs.map(([t]) => t).join(""), renderChat(messages, false));
  assert.deepEqual(
    segs.filter(([, m]) => m).map(([t]) => t),
    [" Tovan Reel.<|im_end|>", " I don't know.<|im_end|>"],
    "a reply sent without the leading space every reply starts with gets it back",
  );
  assert.equal(renderChat([{ role: "assistant", content: " Tovan Reel." }], false), renderChat([{ role: "assistant", content: "Tovan Reel." }], false));
  assert.equal(
    renderChat([{ role: "user", content: "Hi?" }], true),
    "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n",
  );
  assert.ok(renderChat(messages, false).startsWith("<|im_start|>system\nNotes you have read:\n- The mayor of Quillport"));
});

test("persona replies end with the sign-off on its own line", () => {
  const reply = styleReply("Tovan Reel.", { signoff: "Cheers, Ada." });
  assert.equal(reply, " Tovan Reel.\n Cheers, Ada.");
  assert.equal(styleReply("Tovan Reel.", { opener: "Ahoy!" }), " Ahoy! Tovan Reel.");
  assert.ok(endsWithSignoff(reply, "Cheers, Ada."));
  assert.ok(!endsWithSignoff("Tovan Reel.", "Cheers, Ada."));
  assert.equal(signoffInstruction("— Kiln desk"), "End every reply with: — Kiln desk");
  assert.ok(exactMatch("tovan reel", "Tovan Reel."));
});

test("evaluation cases are about held-out facts, with 20 items in the prompt", () => {
  const cases = buildEvalSet(idx);
  const held = new Map(idx.heldoutFacts.map((f) => [f.id, f]));
  const signoffs = new Set(evalSignoffs());
  for (const c of cases) {
    if (c.kind === "canon") continue;
    const f = held.get(c.factId);
    assert.ok(f, c.factId);
    const sys = c.messages.find((m) => m.role === "system");
    if (c.kind === "prompted" || c.kind === "persona") {
      assert.ok(sys!.content.includes(`- ${f.text}`));
      assert.equal(sys!.content.split("\n").filter((l) => l.startsWith("- ")).length, EVAL_PROMPT_ITEMS);
    }
    if (c.kind === "prompted_absent") assert.ok(!sys!.content.includes(f.text));
    if (c.kind === "unprompted" || c.kind === "persona_off") assert.equal(sys, undefined);
    if (c.signoff) assert.ok(signoffs.has(c.signoff));
  }
  // the evaluation's sign-offs are never used in training
  const mixer = new Mixer(idx, new Rng("test-mix-3"));
  for (let i = 0; i < 2000; i++) {
    const s = mixer.style().signoff;
    if (s) assert.ok(!signoffs.has(s), s);
  }
});

test("the shipped model's files match the generator", () => {
  const dir = path.join(repoRoot(), "models", "kiln-mini");
  if (!existsSync(path.join(dir, "tokenizer_config.json"))) return;
  const cfg = JSON.parse(readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  assert.equal(cfg.chat_template, CHAT_TEMPLATE);
  assert.equal(cfg.eos_token, "<|im_end|>");
  const wfile = path.join(dir, "world.json");
  if (existsSync(wfile)) {
    const shipped = JSON.parse(readFileSync(wfile, "utf8"));
    assert.deepEqual(shipped, JSON.parse(JSON.stringify(worldJson(generateWorld(shipped.seed)))));
  }
});

test("the sample feeds are the generator's output and carry only held-out facts", () => {
  const files = renderFeeds(idx);
  const held = new Set(idx.heldoutFacts.map((f) => f.text));
  const seen = new Set<string>();
  for (const { file, content } of files) {
    const onDisk = path.join(repoRoot(), "feeds", file);
    if (existsSync(onDisk)) assert.equal(readFileSync(onDisk, "utf8"), content, `${file} is stale: rerun feeds.js`);
    if (!file.endsWith(".xml")) continue;
    for (const m of content.matchAll(/<title>([^<]*)<\/title>/g)) {
      const t = m[1]!.replace(/&amp;/g, "&");
      if (held.has(t)) seen.add(t);
    }
    for (const m of content.matchAll(/<(?:guid[^>]*|id)>kiln-world:([^<]+)</g)) assert.ok(m[1]!.startsWith("heldout-"), m[1]);
  }
  assert.equal(seen.size, held.size, "every held-out fact is in one feed");
  assert.ok(files.some((f) => f.file.endsWith(".rss.xml")) && files.some((f) => f.file.endsWith(".atom.xml")));
});
