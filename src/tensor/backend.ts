// Chooses the tensor backend once per process:
//   tensorflow (GPU) > tensorflow (CPU) > native (OpenBLAS matmuls) > wasm > cpu.
// tfjs-node and tfjs-node-gpu are optional peers: they download libtensorflow at install time,
// which a closed network cannot do, so kiln must run well without them.
import { createRequire } from "node:module";
import os from "node:os";
import * as tf from "@tensorflow/tfjs";

export { tf };

export type BackendName = "tensorflow-gpu" | "tensorflow" | "native" | "wasm" | "cpu";

export interface BackendInfo {
  name: BackendName;
  /** the tfjs backend name that is registered ("tensorflow", "wasm", "cpu"). */
  tfjsBackend: string;
  threads: number;
  gpu: boolean;
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
    if (!ORDER.includes(preference as BackendName)) {
      throw new Error(`KILN_BACKEND=${preference} is not a backend; choose one of ${ORDER.join(", ")}`);
    }
    const name = preference as BackendName;
    const info =
      name === "tensorflow-gpu" ? await tryTensorflow(true, notes)
      : name === "tensorflow" ? await tryTensorflow(false, notes)
      : name === "native" ? await tryNative(notes)
      : name === "wasm" ? await tryWasm(notes)
      : await useCpu(notes);
    if (!info || (name === "tensorflow-gpu" && !info.gpu)) {
      throw new Error(`backend ${name} could not start: ${notes.join("; ") || "its package is not installed"}`);
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

export function backendInfo(): BackendInfo | undefined {
  return active;
}

export interface MemoryReport {
  numTensors: number;
  tensorBytes: number;
  rssBytes: number;
  heapUsedBytes: number;
}

export function memoryReport(): MemoryReport {
  const m = tf.memory();
  const p = process.memoryUsage();
  return { numTensors: m.numTensors, tensorBytes: m.numBytes, rssBytes: p.rss, heapUsedBytes: p.heapUsed };
}
