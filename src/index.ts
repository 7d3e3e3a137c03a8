// kiln as a library: `import { initBackend, Runtime, KilnChatModel } from "kiln"`. What is
// exported here is the supported surface; the modules behind it may move.

// Start here: pick the fastest backend this machine has (native OpenBLAS, tfjs-node, wasm, ...).
export { initBackend, backendInfo, memoryReport, type BackendName, type BackendInfo } from "./tensor/backend.js";

// Agents: a runtime holds agents (feeds, ledger, bakes, live weights) loaded from agent files.
export { Runtime, type ChatRequest, type ChatChunk, type ChatOutcome } from "./runtime/runtime.js";
export { Agent, type BakeOutcome, type VerifyReport, type AgentBakeEvents } from "./runtime/agent.js";
export { loadAgentConfig, parseAgentConfig, AgentConfigError, type AgentConfig } from "./runtime/agent-config.js";

// LangChain.js: a chat model over an agent's live weights, and the agent's own chat loop with tools.
export { KilnChatModel, type KilnChatModelFields, type KilnCallOptions } from "./agent/langchain.js";
// Structured replies (the API's response_format, KilnChatModel's response_format call option).
export { ResponseFormatError, type ResponseFormat } from "./agent/response-format.js";
// What KilnChatModel throws for a tool_choice or a strict tool schema it cannot hold a reply to.
export { ToolChoiceError, ToolSchemaError } from "./agent/tools.js";
export { createKilnAgent, KilnAgent, type KilnAgentOptions, type TurnResult } from "./agent/chat-loop.js";

// Serving: the OpenAI-compatible API, admin API and dashboard over a runtime.
export { createServer, KilnServer, type ServerOptions } from "./server/index.js";

// Models: load a Hugging Face directory (or the embedded kiln-mini), pull one, generate.
export { loadModel, ModelLoadError, type LoadedModel } from "./model/load.js";
export { resolveModelDir, DEFAULT_MODEL_DIR } from "./model/resolve.js";
export { pullModel, type PullOptions } from "./model/hub.js";
export { generate, type GenerateOptions, type GenerationResult, type GenerationChunk, type FinishReason } from "./model/generate.js";

// Prompt baking on its own: a prompt (and questions) in, a PEFT LoRA adapter out.
export { bake, DEFAULT_BAKE, type BakeRequest, type BakeSettings, type BakeReport, type BakeProgress } from "./bake/trainer.js";
export { LoraAdapter, DEFAULT_LORA, type LoraSettings } from "./lora/adapter.js";
export { saveAdapter, loadAdapter, AdapterFileError } from "./lora/peft.js";
export { exportAdapter, EXPORT_FORMATS, type ExportFormat, type ExportOptions, type ExportResult, type ExportSource } from "./lora/export.js";

// The pieces an agent is made of, for use on their own.
export { Ledger, LedgerError, type Item, type ItemStatus, type VersionRecord, type BakeRun } from "./knowledge/ledger.js";
export { pollFeed, initialFeedState, type FeedSource, type FeedState, type FeedEntry, type PollResult } from "./feeds/feeds.js";
