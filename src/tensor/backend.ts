// Chooses the tensor backend once per process:
//   tensorflow (GPU) > tensorflow (CPU) > native (OpenBLAS matmuls) > wasm > cpu,
// and webgpu when asked for by name (KILN_BACKEND=webgpu; experimental).
// tfjs-node and tfjs-node-gpu are optional peers: they download libtensorflow at install time,
// which a closed network cannot do, so kiln must run well without them. So are webgpu (Dawn for
// Node) and @tensorflow/tfjs-backend-webgpu, which come from the npm registry alone.
import { createRequire } from "node:module";
import os from "node:os";
import * as tf from "@tensorflow/tfjs";

export { tf };

export type BackendName = "tensorflow-gpu" | "tensorflow" | "webgpu" | "native" | "wasm" | "cpu";

export interface BackendInfo {
  name: BackendName;
  /** the tfjs backend name that is registered ("tensorflow", "wasm", "cpu"). */
  tfjsBackend: string;
  threads: number;
  gpu: boolean;
  /** the device it computes on, where the backend names one (webgpu: Dawn's adapter) */
  device?: string;
  /** Why a preferred backend was not used: shown to the user, never swallowed. */
  notes: string[];
}

const require = createRequire(import.meta.url);
let active: BackendInfo | undefined;

function hasPackage(name: string): boolean {
  try {
    require.resolve(name);
    return true;
  } catch {
    return false;
  }
}

async function tryTensorflow(gpu: boolean, notes: string[]): Promise<BackendInfo | undefined> {
  const pkg = gpu ? "@tensorflow/tfjs-node-gpu" : "@tensorflow/tfjs-node";
  if (!hasPackage(pkg)) return undefined;
  try {
    await import(pkg);
    if (!(await tf.setBackend("tensorflow"))) throw new Error("setBackend('tensorflow') returned false");
    await tf.ready();
    if (gpu) {
      // tfjs-node-gpu quietly runs on the CPU when CUDA 11.2 / cuDNN 8 are missing: ask the binding.
      const backend = tf.backend() as unknown as { isUsingGpuDevice?: () => boolean };
      const onGpu = typeof backend.isUsingGpuDevice === "function" ? backend.isUsingGpuDevice() : false;
      if (!onGpu) {
        notes.push(
          `${pkg} is installed but TensorFlow found no usable GPU (it needs CUDA 11.2 and cuDNN 8.1); running on the CPU build instead.`,
        );
        return { name: "tensorflow", tfjsBackend: "tensorflow", threads: os.cpus().length, gpu: false, notes };
      }
    }
    return { name: gpu ? "tensorflow-gpu" : "tensorflow", tfjsBackend: "tensorflow", threads: os.cpus().length, gpu, notes };
  } catch (err) {
    notes.push(`${pkg} is installed but failed to load: ${(err as Error).message.split("\n")[0]}`);
    return undefined;
  }
}

async function tryWasm(notes: string[]): Promise<BackendInfo | undefined> {
  try {
    const wasm = await import("@tensorflow/tfjs-backend-wasm");
    // In Node the .wasm binaries must be found on disk next to the package's entry point.
    const dir = require.resolve("@tensorflow/tfjs-backend-wasm").replace(/[^/\\]+$/, "");
    wasm.setWasmPaths(dir);
    if (!(await tf.setBackend("wasm"))) throw new Error("setBackend('wasm') returned false");
    await tf.ready();
    shareIdentityOnWasm();
    return { name: "wasm", tfjsBackend: "wasm", threads: wasm.getThreadsCount(), gpu: false, notes };
  } catch (err) {
    notes.push(`wasm backend failed to start: ${(err as Error).message}`);
    return undefined;
  }
}

async function tryNative(notes: string[]): Promise<BackendInfo | undefined> {
  try {
    const { registerNativeBackend } = await import("./native.js");
    const blas = registerNativeBackend();
    if (!(await tf.setBackend("native"))) throw new Error("setBackend('native') returned false");
    await tf.ready();
    return { name: "native", tfjsBackend: "native", threads: blas.getThreads(), gpu: false, notes };
  } catch (err) {
    notes.push(`native OpenBLAS backend unavailable: ${(err as Error).message}`);
    return undefined;
  }
}

/**
 * tfjs's WebGPU backend on Dawn (the `webgpu` package): Vulkan where there is a GPU; where Vulkan
 * finds no usable device, Dawn's OpenGL ES backend in WebGPU's compatibility mode (Mesa's
 * software renderer on a machine without a GPU: correct, slow, and reported as no GPU).
 */
async function tryWebgpu(notes: string[]): Promise<BackendInfo | undefined> {
  const [DAWN, TFJS_WEBGPU] = ["webgpu", "@tensorflow/tfjs-backend-webgpu"]; // optional peers: not resolved at build time
  const missing = [DAWN, TFJS_WEBGPU].filter((p) => !hasPackage(p));
  if (missing.length) {
    notes.push(`the webgpu backend needs ${missing.join(" and ")} (npm install webgpu@0.6.2 @tensorflow/tfjs-backend-webgpu@4.22.0)`);
    return undefined;
  }
  const submitBatch = webgpuSubmitBatch(process.env.KILN_WEBGPU_SUBMIT_BATCH); // a bad value is the user's error, not a failed start
  try {
    const dawn = (await import(DAWN)) as DawnModule;
    Object.assign(globalThis, dawn.globals);
    process.env.EGL_PLATFORM ??= "surfaceless"; // OpenGL ES without a display
    let gpu = dawn.create([]);
    let adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    const compatibility = !adapter;
    if (compatibility) {
      gpu = dawn.create(["backend=opengles"]);
      adapter = await gpu.requestAdapter({ featureLevel: "compatibility" });
    }
    if (!adapter) throw new Error("Dawn found no adapter: no Vulkan device and no OpenGL ES");
    const i = adapter.info ?? {};
    const described = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(" ") || "an unnamed adapter";
    const software = compatibility || /llvmpipe|lavapipe|swiftshader|software/i.test(described);
    // tfjs asks navigator.gpu for its own adapter: give it the same choice of backend and mode.
    const chosen = gpu;
    const navigatorGpu = {
      requestAdapter: (o?: object) => chosen.requestAdapter({ ...o, ...(compatibility ? { featureLevel: "compatibility" } : {}) }),
      getPreferredCanvasFormat: () => "rgba8unorm",
      wgslLanguageFeatures: chosen.wgslLanguageFeatures,
    };
    const existing = (globalThis as { navigator?: object }).navigator ?? {};
    Object.defineProperty(globalThis, "navigator", { value: { ...existing, gpu: navigatorGpu }, configurable: true, writable: true });
    // tfjs-webgpu reads a tensor synchronously (dataSync) through an OffscreenCanvas, which only
    // browsers have: say so where it happens instead of "OffscreenCanvas is not defined".
    (globalThis as { OffscreenCanvas?: unknown }).OffscreenCanvas ??= class {
      constructor() {
        throw new Error(
          "the webgpu backend cannot read tensors synchronously in Node (tfjs does it through a browser canvas): " +
            "read with await tensor.data() instead of dataSync()/arraySync(), or use the native, wasm or tensorflow backend",
        );
      }
    };
    await import(TFJS_WEBGPU);
    (await import("./webgpu.js")).registerWebgpuKernels(); // fused WGSL kernels: far fewer dispatches a step
    if (!(await tf.setBackend("webgpu"))) throw new Error("setBackend('webgpu') returned false");
    await tf.ready();
    if (submitBatch !== undefined) {
      tf.env().set("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE", submitBatch);
      notes.push(`tfjs-webgpu submits every ${submitBatch} dispatches (KILN_WEBGPU_SUBMIT_BATCH)`);
    }
    if (software) notes.push(`webgpu is running on a software adapter (${compatibility ? "OpenGL ES, compatibility mode: " : ""}${described}): correct but slow`);
    return { name: "webgpu", tfjsBackend: "webgpu", threads: 1, gpu: !software, device: `${compatibility ? "OpenGL ES (compatibility mode): " : ""}${described}`, notes };
  } catch (err) {
    notes.push(`webgpu backend failed to start: ${(err as Error).message.split("\n")[0]}`);
    return undefined;
  }
}

/**
 * How many dispatches tfjs-webgpu records before it submits them to the GPU (its default 15).
 * Each submit costs host time, and a kiln step is a few hundred dispatches, so the device check
 * times a step at several values (KILN_WEBGPU_SUBMIT_BATCH) before any becomes the default.
 */
export function webgpuSubmitBatch(raw: string | undefined): number | undefined {
  if (raw === undefined || raw.trim() === "") return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 100_000) throw new Error(`KILN_WEBGPU_SUBMIT_BATCH must be a whole number of dispatches from 1 to 100000 (got ${JSON.stringify(raw)})`);
  return n;
}

/** The part of the `webgpu` package (Dawn for Node) that kiln uses. */
interface DawnModule {
  globals: Record<string, unknown>;
  create(flags: string[]): DawnGpu;
}
interface DawnGpu {
  requestAdapter(options?: object): Promise<{ info?: { vendor?: string; architecture?: string; device?: string; description?: string } } | null>;
  wgslLanguageFeatures?: unknown;
}

async function useCpu(notes: string[]): Promise<BackendInfo> {
  await tf.setBackend("cpu");
  await tf.ready();
  return { name: "cpu", tfjsBackend: "cpu", threads: 1, gpu: false, notes };
}

/**
 * tfjs clones every tensor a gradient will need through the Identity kernel, and wasm's Identity
 * copies the data: under a gradient tape each use of a frozen base weight was copied (about
 * 100 MB per layer of a 135M model, past wasm's 4 GB heap). Tensors are immutable and variables
 * are reassigned rather than written in place, so sharing the buffer, as the cpu and webgl
 * backends already do, is safe.
 */
function shareIdentityOnWasm(): void {
  tf.unregisterKernel("Identity", "wasm");
  tf.registerKernel({
    kernelName: "Identity",
    backendName: "wasm",
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      (backend as unknown as { incRef(dataId: object): void }).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
}

const ORDER: BackendName[] = ["tensorflow-gpu", "tensorflow", "native", "wasm", "cpu"];
/** Started only when named: experimental, and slow where Dawn has only a software adapter. */
const BY_NAME_ONLY: BackendName[] = ["webgpu"];

/**
 * Starts the best available backend, or the one named by `preference` / KILN_BACKEND.
 * A named backend that cannot start is an error: silently running somewhere else would make
 * benchmarks and bug reports lie.
 */
export async function initBackend(preference: string | undefined = process.env.KILN_BACKEND): Promise<BackendInfo> {
  if (active && (!preference || preference === active.name)) return active;
  const notes: string[] = [];
  // The "Hi, looks like you are running TensorFlow.js in Node.js" banner is noise for a CLI.
  tf.env().set("PROD", true);
  if (preference) {
    if (![...ORDER, ...BY_NAME_ONLY].includes(preference as BackendName)) {
      throw new Error(`KILN_BACKEND=${preference} is not a backend; choose one of ${[...ORDER, ...BY_NAME_ONLY].join(", ")}`);
    }
    const name = preference as BackendName;
    const info =
      name === "tensorflow-gpu" ? await tryTensorflow(true, notes)
      : name === "tensorflow" ? await tryTensorflow(false, notes)
      : name === "webgpu" ? await tryWebgpu(notes)
      : name === "native" ? await tryNative(notes)
      : name === "wasm" ? await tryWasm(notes)
      : await useCpu(notes);
    if (!info || (name === "tensorflow-gpu" && !info.gpu)) {
      throw new Error(`backend ${name} could not start: ${notes.join("; ") || notInstalled(name)}`);
    }
    active = info;
    return info;
  }
  active =
    (await tryTensorflow(true, notes)) ??
    (await tryTensorflow(false, notes)) ??
    (await tryNative(notes)) ??
    (await tryWasm(notes)) ??
    (await useCpu(notes));
  return active;
}

/** Why a named backend that left no note could not start: its optional package is missing. */
function notInstalled(name: BackendName): string {
  if (name === "tensorflow" || name === "tensorflow-gpu") {
    const pkg = name === "tensorflow" ? "@tensorflow/tfjs-node" : "@tensorflow/tfjs-node-gpu";
    const gpu = name === "tensorflow-gpu" ? "; it needs CUDA 11.2 and cuDNN 8.1" : "";
    return `${pkg} is not installed (an optional peer: npm install ${pkg}@4.22.0, which downloads libtensorflow${gpu})`;
  }
  return "its package is not installed";
}

export function backendInfo(): BackendInfo | undefined {
  return active;
}

/** False on webgpu in Node, where tfjs has no synchronous read (baking needs one). */
export function canReadSynchronously(): boolean {
  return active?.name !== "webgpu";
}

export interface MemoryReport {
  numTensors: number;
  tensorBytes: number;
  rssBytes: number;
  heapUsedBytes: number;
  /** memory of JS objects bound to C++ ones outside the V8 heap (Buffers, ArrayBuffers: tensors' host data on the cpu backends) */
  externalBytes: number;
}

export function memoryReport(): MemoryReport {
  const m = tf.memory();
  const p = process.memoryUsage();
  return { numTensors: m.numTensors, tensorBytes: m.numBytes, rssBytes: p.rss, heapUsedBytes: p.heapUsed, externalBytes: p.external };
}
