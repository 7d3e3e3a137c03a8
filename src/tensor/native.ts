// kiln's "native" backend: tfjs's cpu backend with its matrix multiplies handed to OpenBLAS
// (native/blas, a small Node-API addon). Matmuls are nearly all of a decoder's work; the rest
// stays in tfjs's JavaScript kernels, which are exact and well tested.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs";
import { MathBackendCPU } from "@tensorflow/tfjs-backend-cpu";

interface BlasAddon {
  sgemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, C: Float32Array, batch: number, strideA: number, strideB: number): void;
  setThreads(n: number): void;
  getThreads(): number;
  config(): string;
}

const ADDON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "native", "blas", "build", "Release", "kiln_blas.node");

export function nativeAddonPath(): string {
  return ADDON;
}

let addon: BlasAddon | undefined;

/** Loads the addon; throws with the reason when it was not built. */
export function loadBlas(): BlasAddon {
  if (addon) return addon;
  if (!existsSync(ADDON)) throw new Error(`${ADDON} is missing: build it with npm run build:native (needs g++, make and libopenblas-dev)`);
  addon = createRequire(import.meta.url)(ADDON) as BlasAddon;
  return addon;
}

type CpuBackend = MathBackendCPU;

function product(xs: readonly number[]): number {
  return xs.reduce((a, b) => a * b, 1);
}

function makeBatchMatMul(blas: BlasAddon, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const backend = args.backend as CpuBackend;
    const aVals = backend.data.get(a.dataId).values;
    const bVals = backend.data.get(b.dataId).values;
    const aRank = a.shape.length;
    const bRank = b.shape.length;
    const aBatch = a.shape.slice(0, -2);
    const bBatch = b.shape.slice(0, -2);
    const batchA = product(aBatch);
    const batchB = product(bBatch);
    // One matrix against many, or many against as many: anything else (or non-float32) goes to
    // the reference kernel.
    const sameBatch = aBatch.length === bBatch.length && aBatch.every((d, i) => d === bBatch[i]);
    if (!(aVals instanceof Float32Array) || !(bVals instanceof Float32Array) || !(sameBatch || batchA === 1 || batchB === 1)) {
      return fallback(args);
    }
    const M = transposeA ? a.shape[aRank - 1]! : a.shape[aRank - 2]!;
    const K = transposeA ? a.shape[aRank - 2]! : a.shape[aRank - 1]!;
    const N = transposeB ? b.shape[bRank - 2]! : b.shape[bRank - 1]!;
    const batch = Math.max(batchA, batchB);
    const outBatch = batchA >= batchB ? aBatch : bBatch;
    const out = new Float32Array(batch * M * N);
    if (M > 0 && N > 0) {
      if (K === 0) out.fill(0);
      else blas.sgemm(transposeA, transposeB, M, N, K, aVals, bVals, out, batch, batchA === 1 ? 0 : M * K, batchB === 1 ? 0 : K * N);
    }
    return backend.makeTensorInfo([...outBatch, M, N], "float32", out);
  };
}

let registered = false;

/** Registers the "native" backend (idempotent). Throws if the addon is not built. */
export function registerNativeBackend(threads = os.cpus().length): BlasAddon {
  const blas = loadBlas();
  blas.setThreads(threads);
  if (registered) return blas;
  tf.registerBackend("native", () => new MathBackendCPU(), 1);
  for (const k of tf.getKernelsForBackend("cpu")) {
    if (k.kernelName === "BatchMatMul") continue;
    tf.registerKernel({ ...k, backendName: "native" });
  }
  const reference = tf.getKernel("BatchMatMul", "cpu")!.kernelFunc;
  tf.registerKernel({ kernelName: "BatchMatMul", backendName: "native", kernelFunc: makeBatchMatMul(blas, reference) });
  registered = true;
  return blas;
}
