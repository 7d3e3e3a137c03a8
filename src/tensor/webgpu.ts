// Kiln's fused kernels (src/tensor/fused.ts) as WGSL programs on tfjs's webgpu backend.
//
// Why: on a GPU the webgpu backend is bound by the host, not the device. A decode step of the
// 135M shape ran 1,870 tfjs kernels whose GPU time summed to 47 ms of a 173 ms step (H200,
// docs/benchmarks.md session 13): every kernel pays for a bind group, a uniform buffer and a
// dispatch. RMSNorm composed of tfjs ops is six kernels, RoPE nine, attention about sixteen; here
// each is one or two. The gradients are fused too, and so are the KV cache's append and the
// optimizer (Adam and the clip's norm), so a 135M bake step dispatches 1,701 kernels, not 10,674.
//
// Each program reads its inputs as flat arrays (named by `variableNames`) and writes `result`
// by flat index; every size is a uniform, so one compiled pipeline serves every shape.
// Two kinds of program:
// - element programs: one invocation per output element (`size` uniform guards the tail);
// - row programs: one workgroup per row of `cols` values, reducing through workgroup memory.
//   A dispatch of more than 65,535 workgroups is folded by tfjs into two dimensions and may run
//   a few workgroups past the last row: those read and write nothing. No early return, since
//   every invocation of a workgroup must reach its barriers.
// tests/webgpu.test.ts checks every kernel here, values and gradients, against the composed ops.
import { tf } from "./backend.js";
import { ADAM_STEP, type AdamStep, ATTENTION, ATTENTION_GRAD, KL_ROWS, KL_ROWS_GRAD, KV_APPEND, LOG_SOFTMAX, LORA_LINEAR, LORA_LINEAR_GRAD, RMS_NORM, RMS_NORM_GRAD, ROPE, SUM_OF_SQUARES, SWIGLU, SWIGLU_GRAD } from "./fused.js";

/** The part of tfjs-backend-webgpu's WebGPUProgram that kiln's programs set (no static import: the package is optional). */
interface Program {
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  variableNames: string[];
  workgroupSize: [number, number, number];
  size?: boolean;
  uniforms?: string;
  getUserCode(): string;
}

interface Uniform {
  type: "int32" | "float32";
  data: number[];
}

interface WebGpuBackend {
  runWebGPUProgram(program: Program, inputs: tf.TensorInfo[], outputDtype: tf.DataType, uniforms?: Uniform[]): tf.TensorInfo;
  disposeData(dataId: object): void;
}

const ELEMENT_WORKGROUP = 64;
const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
// one entry per scalar: tfjs lays an entry of n numbers out as a vecn
const ints = (...data: number[]): Uniform[] => data.map((v) => ({ type: "int32", data: [v] }));
const floats = (...data: number[]): Uniform[] => data.map((v) => ({ type: "float32", data: [v] }));

/**
 * One invocation per element of `outputShape`; `body` sees `index` (already < size) and the
 * named int uniforms. `key` names the program's code (tfjs adds ranks and dtypes).
 */
function elementProgram(key: string, outputShape: number[], variableNames: string[], uniforms: string, body: string): Program {
  return {
    outputShape,
    shaderKey: `kiln_${key}`,
    dispatchLayout: { x: outputShape.map((_, i) => i) },
    dispatch: [Math.ceil(product(outputShape) / ELEMENT_WORKGROUP), 1, 1],
    variableNames,
    workgroupSize: [ELEMENT_WORKGROUP, 1, 1],
    size: true,
    uniforms,
    getUserCode: () => `
      fn main(index : i32) {
        if (index < uniforms.size) {
          ${body}
        }
      }`,
  };
}

/** A power of two: wide rows (a vocabulary) get more invocations each. */
const rowWorkgroup = (cols: number) => (cols >= 4096 ? 256 : 64);

type Reduction = "sum" | "max";

/**
 * One workgroup of `wg` invocations per row: `body` sees `row`, `tid`, `valid` (row < rows)
 * and reduce0, reduce1... (the `reductions` in order), which every invocation of the workgroup
 * must reach. Each reduction has its own workgroup array: reusing one across calls raced on
 * Mesa's llvmpipe (a later call's writes reached a slow reader of the earlier result).
 */
function rowProgram(key: string, outputShape: number[], rows: number, wg: number, variableNames: string[], uniforms: string, reductions: Reduction[], body: string): Program {
  const reduce = (kind: Reduction, i: number) => `
      var<workgroup> partial${i} : array<f32, ${wg}>;
      fn reduce${i}(v : f32) -> f32 {
        let t = localIndex;
        partial${i}[t] = v;
        workgroupBarrier();
        for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
          if (t < s) { partial${i}[t] = ${kind === "sum" ? `partial${i}[t] + partial${i}[t + s]` : `max(partial${i}[t], partial${i}[t + s])`}; }
          workgroupBarrier();
        }
        return partial${i}[0];
      }`;
  return {
    outputShape,
    shaderKey: `kiln_${key}_${wg}`,
    dispatchLayout: { x: outputShape.map((_, i) => i) },
    dispatch: [rows, 1, 1],
    variableNames,
    workgroupSize: [wg, 1, 1],
    uniforms,
    getUserCode: () => `
      const WG = ${wg};
      ${reductions.map(reduce).join("\n")}
      fn main(index : i32) {
        let row = index / WG;
        let tid = index % WG;
        let valid = row < uniforms.rows;
        ${body}
      }`,
  };
}

// --- RMSNorm ---------------------------------------------------------------------------------

/** Per row: 1 / rms of the `cols` values of x from `base` -> `inv` (every invocation). */
const INVERSE_RMS = `
        let n = select(0, uniforms.cols, valid);
        let base = row * uniforms.cols;
        var own = 0.0;
        for (var c = tid; c < n; c += WG) { let v = x[base + c]; own += v * v; }
        let ss = reduce0(own);
        let inv = inverseSqrt(ss / f32(uniforms.cols) + uniforms.eps);`;

function rmsNormProgram(rows: number, cols: number, shape: number[]): Program {
  return rowProgram("rmsnorm", shape, rows, rowWorkgroup(cols), ["x", "weight"], "rows : i32, cols : i32, eps : f32,", ["sum"], `${INVERSE_RMS}
        for (var c = tid; c < n; c += WG) { result[base + c] = x[base + c] * inv * weight[c]; }`);
}

/** 1 / rms per row: [rows] */
function rmsInverseProgram(rows: number, cols: number): Program {
  return rowProgram("rmsinv", [rows], rows, rowWorkgroup(cols), ["x"], "rows : i32, cols : i32, eps : f32,", ["sum"], `${INVERSE_RMS}
        if (valid && tid == 0) { result[row] = inv; }`);
}

/** dx = inv * w * dy - x * inv^3 / H * sum(dy * w * x) */
function rmsNormGradXProgram(rows: number, cols: number, shape: number[]): Program {
  return rowProgram("rmsnorm_dx", shape, rows, rowWorkgroup(cols), ["dy", "x", "weight", "inv"], "rows : i32, cols : i32,", ["sum"], `
        let n = select(0, uniforms.cols, valid);
        let base = row * uniforms.cols;
        var own = 0.0;
        for (var c = tid; c < n; c += WG) { own += dy[base + c] * weight[c] * x[base + c]; }
        let dot = reduce0(own);
        let r = inv[select(0, row, valid)];
        let k = r * r * r * dot / f32(uniforms.cols);
        for (var c = tid; c < n; c += WG) { result[base + c] = r * weight[c] * dy[base + c] - x[base + c] * k; }`);
}

// Sums over rows (a weight's gradient) run in chunks of ROW_CHUNK rows, a workgroup per chunk and
// block of output columns (columnSumProgram), then one more program adds the chunks: one long loop
// per invocation was serial work, and Mesa's software renderer stopped such loops at 65,535 iterations.
const ROW_CHUNK = 2048;
const chunksOf = (rows: number) => Math.max(1, Math.ceil(rows / ROW_CHUNK));

/**
 * Sums over a chunk of rows for each of M columns: [chunks, M]. A workgroup takes COLUMN_BLOCK
 * neighbouring columns (neighbouring reads) and splits the chunk's rows among ROW_SLICES
 * invocations each, then adds the slices: an invocation per column walking every row left most of
 * a GPU idle (a LoRA factor's gradient has 4,608 columns) and waited on one load after another.
 * `prelude` sees `col`; `term` sees `n` (the row) and adds one row's part to `acc`; the column's
 * total is multiplied by `factor` (a WGSL expression).
 */
const COLUMN_BLOCK = 16;
const ROW_SLICES = 16;
function columnSumProgram(key: string, chunks: number, M: number, variableNames: string[], uniforms: string, prelude: string, term: string, factor = "1.0"): Program {
  const blocks = Math.ceil(M / COLUMN_BLOCK);
  return {
    outputShape: [chunks, M],
    shaderKey: `kiln_${key}`,
    dispatchLayout: { x: [0, 1] },
    dispatch: [chunks * blocks, 1, 1],
    variableNames,
    workgroupSize: [COLUMN_BLOCK * ROW_SLICES, 1, 1],
    uniforms,
    getUserCode: () => `
      var<workgroup> slices : array<f32, ${COLUMN_BLOCK * ROW_SLICES}>;
      fn main(index : i32) {
        let group = index / ${COLUMN_BLOCK * ROW_SLICES};
        let tid = index % ${COLUMN_BLOCK * ROW_SLICES};
        let blocks = (uniforms.M + ${COLUMN_BLOCK - 1}) / ${COLUMN_BLOCK};
        let chunk = group / blocks;
        let c = tid % ${COLUMN_BLOCK};
        let slice = tid / ${COLUMN_BLOCK};
        let col = (group % blocks) * ${COLUMN_BLOCK} + c;
        // a folded dispatch may run groups past the last chunk: they add nothing, yet reach the barrier
        let valid = chunk * ${ROW_CHUNK} < uniforms.rows && col < uniforms.M;
        var acc = 0.0;
        if (valid) {
          ${prelude}
          let last = min(uniforms.rows, (chunk + 1) * ${ROW_CHUNK});
          for (var n = chunk * ${ROW_CHUNK} + slice; n < last; n += ${ROW_SLICES}) { ${term} }
        }
        slices[tid] = acc;
        workgroupBarrier();
        if (valid && slice == 0) {
          var total = 0.0;
          for (var i = 0; i < ${ROW_SLICES}; i++) { total += slices[i * ${COLUMN_BLOCK} + c]; }
          result[chunk * uniforms.M + col] = total * ${factor};
        }
      }`,
  };
}

/** parts [chunks, M] summed over chunks: [M] */
function sumChunksProgram(M: number): Program {
  return elementProgram("sum_chunks", [M], ["parts"], "chunks : i32, M : i32,", `
          var acc = 0.0;
          for (var c = 0; c < uniforms.chunks; c++) { acc += parts[c * uniforms.M + index]; }
          result[index] = acc;`);
}

/** Runs a chunked program over rows and adds its chunks where there is more than one. */
function sumOverRowChunks(gpu: WebGpuBackend, rows: number, outShape: number[], program: (chunks: number) => Program, inputs: tf.TensorInfo[], uniforms: Uniform[]): tf.TensorInfo {
  const chunks = chunksOf(rows);
  const M = product(outShape);
  const parts = gpu.runWebGPUProgram(program(chunks), inputs, "float32", [...ints(rows, M), ...uniforms]); // [chunks, M]
  if (chunks === 1) return { ...parts, shape: outShape };
  const sum = gpu.runWebGPUProgram(sumChunksProgram(M), [parts], "float32", ints(chunks, M));
  gpu.disposeData(parts.dataId);
  return { ...sum, shape: outShape };
}

/** dw[c] = sum over rows of dy * x * inv, per chunk of rows: [chunks, cols] */
function rmsNormGradWProgram(chunks: number, cols: number): Program {
  return columnSumProgram("rmsnorm_dw", chunks, cols, ["dy", "x", "inv"], "rows : i32, M : i32,", "", "let i = n * uniforms.M + col; acc += dy[i] * x[i] * inv[n];");
}

// --- SwiGLU, RoPE ----------------------------------------------------------------------------

const SIGMOID = `let s = 1.0 / (1.0 + exp(-g));`;

function swigluProgram(shape: number[]): Program {
  return elementProgram("swiglu", shape, ["gate", "up"], "", `let g = gate[index]; ${SIGMOID} result[index] = g * s * up[index];`);
}

/** d/dgate (`part` 0) or d/dup (1) of silu(gate) * up */
function swigluGradProgram(shape: number[], part: 0 | 1): Program {
  // (an input the code does not read must not be bound: Dawn's layout leaves it out)
  const [names, value] = part === 0 ? [["dy", "gate", "up"], "dy[index] * up[index] * s * (1.0 + g * (1.0 - s))"] : [["dy", "gate"], "dy[index] * g * s"];
  return elementProgram(`swiglu_d${part}`, shape, names, "", `let g = gate[index]; ${SIGMOID} result[index] = ${value};`);
}

/** x * cos + sign * rotate_half(x) * sin; x: [B, T, H, hd], cos, sin: [B, T, 1, hd] */
function ropeProgram(shape: number[]): Program {
  return elementProgram("rope", shape, ["x", "cos", "sin"], "heads : i32, hd : i32, sign : f32,", `
          let d = index % uniforms.hd;
          let half = uniforms.hd / 2;
          let table = (index / (uniforms.heads * uniforms.hd)) * uniforms.hd + d; // [B*T, hd]
          let rotated = select(x[index - half], -x[index + half], d < half);
          result[index] = x[index] * cos[table] + uniforms.sign * rotated * sin[table];`);
}

// --- softmax rows: log-softmax and the KL objective -----------------------------------------

/** Per row of `logits` at `base`: max and log-sum-exp -> `lse` (every invocation). */
const LOG_SUM_EXP = `
        let n = select(0, uniforms.cols, valid);
        let base = row * uniforms.cols;
        var own = -3.402823e+38;
        for (var c = tid; c < n; c += WG) { own = max(own, logits[base + c]); }
        let m = reduce0(own);
        var sum = 0.0;
        for (var c = tid; c < n; c += WG) { sum += exp(logits[base + c] - m); }
        let lse = m + log(reduce1(sum));`;

function logSoftmaxProgram(rows: number, cols: number, shape: number[]): Program {
  return rowProgram("logsoftmax", shape, rows, rowWorkgroup(cols), ["logits"], "rows : i32, cols : i32,", ["max", "sum"], `${LOG_SUM_EXP}
        for (var c = tid; c < n; c += WG) { result[base + c] = logits[base + c] - lse; }`);
}

/** KL(teacher || softmax(logits)) per row: [rows] */
function klRowsProgram(rows: number, cols: number, shape: number[]): Program {
  return rowProgram("klrows", shape, rows, rowWorkgroup(cols), ["logits", "teacher"], "rows : i32, cols : i32,", ["max", "sum", "sum"], `${LOG_SUM_EXP}
        var kl = 0.0;
        for (var c = tid; c < n; c += WG) { let lp = teacher[base + c]; kl += exp(lp) * (lp - (logits[base + c] - lse)); }
        let total = reduce2(kl);
        if (valid && tid == 0) { result[row] = total; }`);
}

/** dy[row] * (softmax(logits) - exp(teacher)) */
function klRowsGradProgram(rows: number, cols: number, shape: number[]): Program {
  return rowProgram("klrows_grad", shape, rows, rowWorkgroup(cols), ["dy", "logits", "teacher"], "rows : i32, cols : i32,", ["max", "sum"], `${LOG_SUM_EXP}
        let g = dy[select(0, row, valid)];
        for (var c = tid; c < n; c += WG) { result[base + c] = g * (exp(logits[base + c] - lse) - exp(teacher[base + c])); }`);
}

// --- attention -------------------------------------------------------------------------------
// q, dout: [B, T, heads, hd]; k, v: [B, S, kvHeads, hd], or [B, kvHeads, S, hd] head-major (the
// KV cache); mask: [B, T, S]; probabilities and score gradients: [B, heads, T, S]. Query head h
// reads KV head h / groups. A K/V element (b, kvh, s, d) sits at b*kvB + kvh*kvH + s*kvS + d.

interface AttentionDims {
  B: number;
  T: number;
  S: number;
  /** slots K and V hold per head (>= S: a KV cache's storage has room to grow; head-major only) */
  cap: number;
  heads: number;
  kvHeads: number;
  hd: number;
  kvHeadMajor: boolean;
}

function attentionDims(q: tf.TensorInfo, k: tf.TensorInfo, kvHeadMajor: boolean, S?: number): AttentionDims {
  const [B, T, heads, hd] = q.shape as [number, number, number, number];
  const [cap, kvHeads] = kvHeadMajor ? [k.shape[2]!, k.shape[1]!] : [k.shape[1]!, k.shape[2]!];
  return { B, T, S: S ?? cap, cap, heads, kvHeads, hd, kvHeadMajor };
}

const ATTENTION_UNIFORMS = "T : i32, S : i32, heads : i32, groups : i32, hd : i32, kvB : i32, kvH : i32, kvS : i32,";

function attentionUniforms(d: AttentionDims): Uniform[] {
  const kvB = d.cap * d.kvHeads * d.hd;
  const [kvH, kvS] = d.kvHeadMajor ? [d.cap * d.hd, d.hd] : [d.hd, d.kvHeads * d.hd];
  return ints(d.T, d.S, d.heads, d.heads / d.kvHeads, d.hd, kvB, kvH, kvS);
}

/** A score row (b, h, t) of [B, heads, T, S]: where its query and its KV head start. */
const SCORE_ROW = `
        let n = select(0, uniforms.S, valid);
        let base = row * uniforms.S;
        let t = row % uniforms.T;
        let h = (row / uniforms.T) % uniforms.heads;
        let b = row / (uniforms.T * uniforms.heads);
        let qBase = ((b * uniforms.T + t) * uniforms.heads + h) * uniforms.hd; // [B, T, heads, hd]
        let kvBase = b * uniforms.kvB + (h / uniforms.groups) * uniforms.kvH;`;

/** softmax(q k^T * scale + mask) per (b, h, t) row: [B, heads, T, S] */
function attentionProbsProgram(d: AttentionDims): Program {
  const rows = d.B * d.heads * d.T;
  return rowProgram("attn_probs", [d.B, d.heads, d.T, d.S], rows, 64, ["q", "k", "mask"], `rows : i32, ${ATTENTION_UNIFORMS} scale : f32,`, ["max", "sum"], `${SCORE_ROW}
        let maskBase = (b * uniforms.T + t) * uniforms.S;
        var own = -3.402823e+38;
        for (var s = tid; s < n; s += WG) {
          let kBase = kvBase + s * uniforms.kvS;
          var dot = 0.0;
          for (var e = 0; e < uniforms.hd; e++) { dot += q[qBase + e] * k[kBase + e]; }
          let score = dot * uniforms.scale + mask[maskBase + s];
          result[base + s] = score;
          own = max(own, score);
        }
        let m = reduce0(own);
        var sum = 0.0;
        for (var s = tid; s < n; s += WG) { let e = exp(result[base + s] - m); result[base + s] = e; sum += e; }
        let total = reduce1(sum);
        for (var s = tid; s < n; s += WG) { result[base + s] = result[base + s] / total; }`);
}

/**
 * The gradient of the scores, scale folded in: P * (dP - sum_s P dP) * scale, dP = dout v^T;
 * [B, heads, T, S]
 */
function attentionScoreGradProgram(d: AttentionDims): Program {
  const rows = d.B * d.heads * d.T;
  return rowProgram("attn_dscores", [d.B, d.heads, d.T, d.S], rows, 64, ["dout", "v", "probs"], `rows : i32, ${ATTENTION_UNIFORMS} scale : f32,`, ["sum"], `${SCORE_ROW}
        var own = 0.0;
        for (var s = tid; s < n; s += WG) {
          let vBase = kvBase + s * uniforms.kvS;
          var dp = 0.0;
          for (var e = 0; e < uniforms.hd; e++) { dp += dout[qBase + e] * v[vBase + e]; }
          result[base + s] = dp;
          own += probs[base + s] * dp;
        }
        let total = reduce0(own);
        for (var s = tid; s < n; s += WG) { result[base + s] = probs[base + s] * (result[base + s] - total) * uniforms.scale; }`);
}

/**
 * sum over s of weights[b, h, t, s] * kv[b, h / groups, s, d] -> [B, T, heads, hd]: attention's
 * output (weights = probabilities, kv = V) and the query's gradient (score gradients, K).
 */
function attentionMixProgram(d: AttentionDims): Program {
  return elementProgram("attn_mix", [d.B, d.T, d.heads, d.hd], ["weights", "kv"], ATTENTION_UNIFORMS, `
          let e = index % uniforms.hd;
          let h = (index / uniforms.hd) % uniforms.heads;
          let t = (index / (uniforms.hd * uniforms.heads)) % uniforms.T;
          let b = index / (uniforms.hd * uniforms.heads * uniforms.T);
          let wBase = ((b * uniforms.heads + h) * uniforms.T + t) * uniforms.S;
          let kvBase = b * uniforms.kvB + (h / uniforms.groups) * uniforms.kvH + e;
          var acc = 0.0;
          for (var s = 0; s < uniforms.S; s++) { acc += weights[wBase + s] * kv[kvBase + s * uniforms.kvS]; }
          result[index] = acc;`);
}

/**
 * sum over the group's query heads and t of weights[b, h, t, s] * x[b, t, h, d], laid out as K/V:
 * the gradient of K (weights = score gradients, x = q) and of V (probabilities, dout).
 */
function attentionKvGradProgram(d: AttentionDims, kvShape: number[]): Program {
  return elementProgram("attn_kvgrad", kvShape, ["weights", "x"], `${ATTENTION_UNIFORMS} kvHeads : i32,`, `
          let e = index % uniforms.hd;
          let b = index / uniforms.kvB;
          let within = index % uniforms.kvB; // either layout: kvh * kvH + s * kvS + e
          let kvh = within / uniforms.kvH % uniforms.kvHeads;
          let s = within / uniforms.kvS % uniforms.S;
          var acc = 0.0;
          for (var g = 0; g < uniforms.groups; g++) {
            let h = kvh * uniforms.groups + g;
            for (var t = 0; t < uniforms.T; t++) {
              acc += weights[((b * uniforms.heads + h) * uniforms.T + t) * uniforms.S + s] * x[((b * uniforms.T + t) * uniforms.heads + h) * uniforms.hd + e];
            }
          }
          result[index] = acc;`);
}

/** past [B, kvHeads, S0, hd] then x [B, T, kvHeads, hd] along the sequence: [B, kvHeads, S0 + T, hd] */
function kvAppendProgram(shape: number[]): Program {
  return elementProgram("kv_append", shape, ["past", "x"], "kvHeads : i32, S0 : i32, T : i32, hd : i32,", `
          let S = uniforms.S0 + uniforms.T;
          let e = index % uniforms.hd;
          let s = (index / uniforms.hd) % S;
          let h = (index / (uniforms.hd * S)) % uniforms.kvHeads;
          let b = index / (uniforms.hd * S * uniforms.kvHeads);
          if (s < uniforms.S0) {
            result[index] = past[((b * uniforms.kvHeads + h) * uniforms.S0 + s) * uniforms.hd + e];
          } else {
            result[index] = x[((b * uniforms.T + s - uniforms.S0) * uniforms.kvHeads + h) * uniforms.hd + e];
          }`);
}

// --- LoRA linear ------------------------------------------------------------------------------
// x: [N, in], w: [in, out] (frozen), a: [r, in], b: [out, r]: x @ w + scale * (x @ a^T) @ b^T.
// Decoding's few rows run one program; more rows keep the big product in tfjs's tiled matmul and
// the rank-r parts in two small programs.

/** Ranks up to which a thin product runs a workgroup per row (its r sums in workgroup memory). */
const THIN_WORKGROUP_RANK = 32;
const THIN_WG = 64;

/**
 * scale * L @ R -> [rows, r]: L [rows, K]; R [K, r], or [r, K] with `transposed`. Up to rank
 * THIN_WORKGROUP_RANK a workgroup takes a row: its invocations split K (neighbouring reads), each
 * keeping r sums, added across the workgroup at the end. An invocation per output walking all of K
 * (rows * r of them: 2,048 for a bake step's 256 rows at rank 8) left most of a GPU idle.
 */
function thinProduct(gpu: WebGpuBackend, left: tf.TensorInfo, right: tf.TensorInfo, r: number, transposed: boolean, scale: number): tf.TensorInfo {
  const [rows, K] = left.shape as [number, number];
  const term = (j: string) => (transposed ? `rightT[${j} * uniforms.K + k]` : `rightT[k * uniforms.r + ${j}]`);
  if (r > THIN_WORKGROUP_RANK) {
    const program = elementProgram(`lora_thin${transposed ? "_t" : ""}`, [rows, r], ["left", "rightT"], "K : i32, r : i32, scale : f32,", `
          let n = index / uniforms.r;
          let j = index % uniforms.r;
          var acc = 0.0;
          for (var k = 0; k < uniforms.K; k++) { acc += left[n * uniforms.K + k] * ${term("j")}; }
          result[index] = uniforms.scale * acc;`);
    return gpu.runWebGPUProgram(program, [left, right], "float32", [...ints(K, r), ...floats(scale)]);
  }
  const program: Program = {
    outputShape: [rows, r],
    shaderKey: `kiln_lora_thin_wg${transposed ? "_t" : ""}_${r}`, // r sizes the sums
    dispatchLayout: { x: [0, 1] },
    dispatch: [rows, 1, 1],
    variableNames: ["left", "rightT"],
    workgroupSize: [THIN_WG, 1, 1],
    uniforms: "rows : i32, K : i32, r : i32, scale : f32,",
    getUserCode: () => `
      var<workgroup> sums : array<f32, ${r * THIN_WG}>;
      fn main(index : i32) {
        let row = index / ${THIN_WG};
        let tid = index % ${THIN_WG};
        // a folded dispatch may run groups past the last row: they add nothing, yet reach the barriers
        let valid = row < uniforms.rows;
        var acc : array<f32, ${r}>;
        if (valid) {
          for (var k = tid; k < uniforms.K; k += ${THIN_WG}) {
            let l = left[row * uniforms.K + k];
            for (var j = 0; j < ${r}; j++) { acc[j] += l * ${term("j")}; }
          }
        }
        for (var j = 0; j < ${r}; j++) { sums[j * ${THIN_WG} + tid] = acc[j]; }
        workgroupBarrier();
        for (var s = ${THIN_WG / 2}; s > 0; s = s >> 1u) {
          if (tid < s) { for (var j = 0; j < ${r}; j++) { sums[j * ${THIN_WG} + tid] += sums[j * ${THIN_WG} + tid + s]; } }
          workgroupBarrier();
        }
        if (valid && tid < ${r}) { result[row * ${r} + tid] = uniforms.scale * sums[tid * ${THIN_WG}]; }
      }`,
  };
  return gpu.runWebGPUProgram(program, [left, right], "float32", [...ints(rows, K, r), ...floats(scale)]);
}

/** base + scale * L @ R -> [rows, M]: base [rows, M], L [rows, r]; R [r, M], or [M, r] with `transposed` */
function addLowRankProgram(rows: number, M: number, transposed: boolean): Program {
  const right = transposed ? "right[m * uniforms.r + j]" : "right[j * uniforms.M + m]";
  return elementProgram(`lora_add${transposed ? "_t" : ""}`, [rows, M], ["base", "left", "right"], "M : i32, r : i32, scale : f32,", `
          let n = index / uniforms.M;
          let m = index % uniforms.M;
          var acc = 0.0;
          for (var j = 0; j < uniforms.r; j++) { acc += left[n * uniforms.r + j] * ${right}; }
          result[index] = base[index] + uniforms.scale * acc;`);
}

/** Rows up to which a LoRA linear is one program (decoding: one row a reply) rather than three. */
const FEW_ROWS = 16;

/**
 * x @ w + scale * (x @ a^T) @ b^T in one program, for a few rows: a workgroup per row and block of
 * ELEMENT_WORKGROUP output columns first writes the row's x @ a^T (r values, one invocation each)
 * to workgroup memory, then each invocation walks its column of w (neighbouring invocations read
 * neighbouring addresses). Each block repeats the r-wide product: r * in multiply-adds, next to
 * in * ELEMENT_WORKGROUP for its columns of w. x: [N, in], w: [in, out], a: [r, in], b: [out, r]
 */
function loraFewRowsProgram(N: number, outF: number, r: number): Program {
  return {
    outputShape: [N, outF],
    shaderKey: `kiln_lora_few_${r}`, // r sizes the workgroup array
    dispatchLayout: { x: [0, 1] },
    dispatch: [N * Math.ceil(outF / ELEMENT_WORKGROUP), 1, 1],
    variableNames: ["x", "w", "a", "b"],
    workgroupSize: [ELEMENT_WORKGROUP, 1, 1],
    uniforms: "rows : i32, inF : i32, outF : i32, r : i32, scale : f32,",
    getUserCode: () => `
      const WG = ${ELEMENT_WORKGROUP};
      var<workgroup> xa : array<f32, ${r}>;
      fn main(index : i32) {
        let group = index / WG;
        let tid = index % WG;
        let blocks = (uniforms.outF + WG - 1) / WG;
        let n = group / blocks;
        let col = (group % blocks) * WG + tid;
        // a folded dispatch may run groups past the last row: they compute nothing, yet reach the barrier
        let valid = n < uniforms.rows;
        let xBase = n * uniforms.inF;
        for (var k = tid; k < uniforms.r; k += WG) {
          var acc = 0.0;
          if (valid) { for (var i = 0; i < uniforms.inF; i++) { acc += x[xBase + i] * a[k * uniforms.inF + i]; } }
          xa[k] = acc;
        }
        workgroupBarrier();
        if (valid && col < uniforms.outF) {
          var acc = 0.0;
          for (var i = 0; i < uniforms.inF; i++) { acc += x[xBase + i] * w[i * uniforms.outF + col]; }
          var low = 0.0;
          for (var k = 0; k < uniforms.r; k++) { low += xa[k] * b[col * uniforms.r + k]; }
          result[n * uniforms.outF + col] = acc + uniforms.scale * low;
        }
      }`,
  };
}

/** scale * L^T @ R -> [P, Q] (a factor's gradient), per chunk of rows: [chunks, P * Q]; L [rows, P], R [rows, Q] */
function rowsProductProgram(chunks: number, P: number, Q: number): Program {
  return columnSumProgram("lora_rows", chunks, P * Q, ["left", "right"], "rows : i32, M : i32, P : i32, Q : i32, scale : f32,", "let p = col / uniforms.Q; let q = col % uniforms.Q;", "acc += left[n * uniforms.P + p] * right[n * uniforms.Q + q];", "uniforms.scale");
}

// --- the optimizer ---------------------------------------------------------------------------

/** Inputs a sum-of-squares program reads besides the running total (8 storage buffers a shader). */
const SQUARES_PER_PROGRAM = 6;

/** (total[0] where given) + the sum of squares of up to six flat inputs: [1], one workgroup */
function sumOfSquaresProgram(count: number, withTotal: boolean): Program {
  const names = Array.from({ length: count }, (_, i) => `t${i}`);
  const loops = names.map((t, i) => `for (var i = tid; i < uniforms.n${i}; i += WG) { let v = ${t}[i]; own += v * v; }`).join("\n        ");
  return rowProgram(`sumsq${count}${withTotal ? "_acc" : ""}`, [1], 1, 256, [...(withTotal ? ["total"] : []), ...names], `rows : i32, ${names.map((_, i) => `n${i} : i32,`).join(" ")}`, ["sum"], `
        var own = 0.0;
        ${loops}
        let sum = reduce0(own);
        if (tid == 0) { result[0] = sum${withTotal ? " + total[0]" : ""}; }`);
}

/** The new m and v of Adam, [2, N]: invocation i < N writes m[i], i >= N writes v[i - N]. */
function adamMomentsProgram(n: number): Program {
  return elementProgram("adam_moments", [2, n], ["grad", "moments", "norm"], "n : i32, beta1 : f32, beta2 : f32, clipNorm : f32,", `
          let i = index % uniforms.n;
          let nrm = norm[0];
          let scale = select(1.0, uniforms.clipNorm / (nrm + 1e-6), uniforms.clipNorm > 0.0 && nrm > uniforms.clipNorm);
          let g = grad[i] * scale;
          if (index < uniforms.n) {
            result[index] = uniforms.beta1 * moments[index] + (1.0 - uniforms.beta1) * g;
          } else {
            result[index] = uniforms.beta2 * moments[index] + (1.0 - uniforms.beta2) * g * g;
          }`);
}

/** value - lr (m / c1) / (sqrt(v / c2) + eps) */
function adamValueProgram(shape: number[]): Program {
  return elementProgram("adam_value", shape, ["value", "moments"], "n : i32, learningRate : f32, epsilon : f32, c1 : f32, c2 : f32,", `
          let m = moments[index];
          let v = moments[index + uniforms.n];
          result[index] = value[index] - uniforms.learningRate * (m / uniforms.c1) / (sqrt(v / uniforms.c2) + uniforms.epsilon);`);
}

// --- kernels ---------------------------------------------------------------------------------

type Inputs = Record<string, tf.TensorInfo>;
const rowsOf = (shape: number[]) => {
  const cols = shape.at(-1)!;
  return { rows: cols ? product(shape) / cols : 0, cols };
};

const webgpuKernels: Record<string, tf.KernelFunc> = {
  [RMS_NORM]: ({ inputs, backend, attrs }) => {
    const { x, weight } = inputs as Inputs;
    const { rows, cols } = rowsOf(x!.shape);
    const eps = (attrs as unknown as { eps: number }).eps;
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(rmsNormProgram(rows, cols, x!.shape), [x!, weight!], "float32", [...ints(rows, cols), ...floats(eps)]);
  },
  [RMS_NORM_GRAD]: ({ inputs, backend, attrs }) => {
    const { dy, x, weight } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    const { rows, cols } = rowsOf(x!.shape);
    const eps = (attrs as unknown as { eps: number }).eps;
    const inv = gpu.runWebGPUProgram(rmsInverseProgram(rows, cols), [x!], "float32", [...ints(rows, cols), ...floats(eps)]); // [rows]
    const dx = gpu.runWebGPUProgram(rmsNormGradXProgram(rows, cols, x!.shape), [dy!, x!, weight!, inv], "float32", ints(rows, cols));
    const dw = sumOverRowChunks(gpu, rows, weight!.shape, (chunks) => rmsNormGradWProgram(chunks, cols), [dy!, x!, inv], []);
    gpu.disposeData(inv.dataId);
    return [dx, dw];
  },
  [SWIGLU]: ({ inputs, backend }) => {
    const { gate, up } = inputs as Inputs;
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(swigluProgram(gate!.shape), [gate!, up!], "float32");
  },
  [SWIGLU_GRAD]: ({ inputs, backend }) => {
    const { dy, gate, up } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    return [gpu.runWebGPUProgram(swigluGradProgram(gate!.shape, 0), [dy!, gate!, up!], "float32"), gpu.runWebGPUProgram(swigluGradProgram(gate!.shape, 1), [dy!, gate!], "float32")];
  },
  [ROPE]: ({ inputs, backend, attrs }) => {
    const { x, cos, sin } = inputs as Inputs;
    const [, , heads, hd] = x!.shape as [number, number, number, number];
    const sign = (attrs as unknown as { sign: number }).sign;
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(ropeProgram(x!.shape), [x!, cos!, sin!], "float32", [...ints(heads, hd), ...floats(sign)]);
  },
  [LOG_SOFTMAX]: ({ inputs, backend }) => {
    const { x } = inputs as Inputs;
    const { rows, cols } = rowsOf(x!.shape);
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(logSoftmaxProgram(rows, cols, x!.shape), [x!], "float32", ints(rows, cols));
  },
  [KL_ROWS]: ({ inputs, backend }) => {
    const { logits, teacherLogProbs } = inputs as Inputs;
    const { rows, cols } = rowsOf(logits!.shape);
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(klRowsProgram(rows, cols, logits!.shape.slice(0, -1)), [logits!, teacherLogProbs!], "float32", ints(rows, cols));
  },
  [KL_ROWS_GRAD]: ({ inputs, backend }) => {
    const { dy, logits, teacherLogProbs } = inputs as Inputs;
    const { rows, cols } = rowsOf(logits!.shape);
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(klRowsGradProgram(rows, cols, logits!.shape), [dy!, logits!, teacherLogProbs!], "float32", ints(rows, cols));
  },
  [ATTENTION]: ({ inputs, backend, attrs }) => {
    const { q, k, v, mask } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    const { scale, kvHeadMajor } = attrs as unknown as { scale: number; kvHeadMajor: boolean };
    const d = attentionDims(q!, k!, kvHeadMajor, mask!.shape[2]);
    const u = attentionUniforms(d);
    const probs = gpu.runWebGPUProgram(attentionProbsProgram(d), [q!, k!, mask!], "float32", [...ints(d.B * d.heads * d.T), ...u, ...floats(scale)]);
    const out = gpu.runWebGPUProgram(attentionMixProgram(d), [probs, v!], "float32", u);
    return [out, probs];
  },
  [ATTENTION_GRAD]: ({ inputs, backend, attrs }) => {
    const { dout, q, k, v, probs } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    const { scale, kvHeadMajor } = attrs as unknown as { scale: number; kvHeadMajor: boolean };
    const d = attentionDims(q!, k!, kvHeadMajor);
    const u = attentionUniforms(d);
    const dScores = gpu.runWebGPUProgram(attentionScoreGradProgram(d), [dout!, v!, probs!], "float32", [...ints(d.B * d.heads * d.T), ...u, ...floats(scale)]); // [B, heads, T, S]
    const dq = gpu.runWebGPUProgram(attentionMixProgram(d), [dScores, k!], "float32", u);
    const dk = gpu.runWebGPUProgram(attentionKvGradProgram(d, k!.shape), [dScores, q!], "float32", [...u, ...ints(d.kvHeads)]);
    const dv = gpu.runWebGPUProgram(attentionKvGradProgram(d, v!.shape), [probs!, dout!], "float32", [...u, ...ints(d.kvHeads)]);
    gpu.disposeData(dScores.dataId);
    return [dq, dk, dv];
  },
  [LORA_LINEAR]: ({ inputs, backend, attrs }) => {
    const { x, w, a, b } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    const scale = (attrs as unknown as { scale: number }).scale;
    const [N, inF] = x!.shape as [number, number];
    const [r, outF] = [a!.shape[0]!, w!.shape[1]!];
    if (N <= FEW_ROWS) return gpu.runWebGPUProgram(loraFewRowsProgram(N, outF, r), [x!, w!, a!, b!], "float32", [...ints(N, inF, outF, r), ...floats(scale)]);
    const y = matMul(gpu, x!, w!, false); // [N, out]
    const xa = thinProduct(gpu, x!, a!, r, true, 1); // [N, r]
    const out = gpu.runWebGPUProgram(addLowRankProgram(N, outF, true), [y, xa, b!], "float32", [...ints(outF, r), ...floats(scale)]);
    gpu.disposeData(y.dataId);
    gpu.disposeData(xa.dataId);
    return out;
  },
  [LORA_LINEAR_GRAD]: ({ inputs, backend, attrs }) => {
    const { dy, x, w, a, b } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    const scale = (attrs as unknown as { scale: number }).scale;
    const [N, inF] = x!.shape as [number, number];
    const [r, outF] = [a!.shape[0]!, w!.shape[1]!];
    const t = thinProduct(gpu, dy!, b!, r, false, scale); // scale * dy @ b: [N, r]
    const dxBase = matMul(gpu, dy!, w!, true); // dy @ w^T: [N, in]
    const dx = gpu.runWebGPUProgram(addLowRankProgram(N, inF, false), [dxBase, t, a!], "float32", [...ints(inF, r), ...floats(1)]); // + t @ a
    const da = sumOverRowChunks(gpu, N, [r, inF], (chunks) => rowsProductProgram(chunks, r, inF), [t, x!], [...ints(r, inF), ...floats(1)]); // t^T @ x: [r, in]
    const xa = thinProduct(gpu, x!, a!, r, true, 1); // [N, r]
    const db = sumOverRowChunks(gpu, N, [outF, r], (chunks) => rowsProductProgram(chunks, outF, r), [dy!, xa], [...ints(outF, r), ...floats(scale)]); // scale * dy^T @ xa: [out, r]
    for (const tmp of [t, dxBase, xa]) gpu.disposeData(tmp.dataId);
    return [dx, da, db];
  },
  [KV_APPEND]: ({ inputs, backend }) => {
    const { past, x } = inputs as Inputs;
    const [B, kvHeads, S0, hd] = past!.shape as [number, number, number, number];
    const T = x!.shape[1]!;
    return (backend as unknown as WebGpuBackend).runWebGPUProgram(kvAppendProgram([B, kvHeads, S0 + T, hd]), [past!, x!], "float32", ints(kvHeads, S0, T, hd));
  },
  [SUM_OF_SQUARES]: ({ inputs, backend }) => {
    const gpu = backend as unknown as WebGpuBackend;
    const all = Object.values(inputs as Inputs);
    let total: tf.TensorInfo | undefined;
    for (let i = 0; i < all.length; i += SQUARES_PER_PROGRAM) {
      const chunk = all.slice(i, i + SQUARES_PER_PROGRAM);
      const next = gpu.runWebGPUProgram(sumOfSquaresProgram(chunk.length, total !== undefined), [...(total ? [total] : []), ...chunk], "float32", ints(1, ...chunk.map((t) => product(t.shape))));
      if (total) gpu.disposeData(total.dataId);
      total = next;
    }
    return { ...total!, shape: [] }; // a scalar: the same buffer
  },
  [ADAM_STEP]: ({ inputs, backend, attrs }) => {
    const { value, grad, moments, norm } = inputs as Inputs;
    const gpu = backend as unknown as WebGpuBackend;
    const s = attrs as unknown as AdamStep;
    const n = product(value!.shape);
    const nextMoments = gpu.runWebGPUProgram(adamMomentsProgram(n), [grad!, moments!, norm!], "float32", [...ints(n), ...floats(s.beta1, s.beta2, s.clipNorm)]);
    const next = gpu.runWebGPUProgram(adamValueProgram(value!.shape), [value!, nextMoments], "float32", [...ints(n), ...floats(s.learningRate, s.epsilon, s.c1, s.c2)]);
    return [next, { ...nextMoments, shape: moments!.shape }];
  },
};

/** tfjs-webgpu's own matmul, called as its kernel (no engine bookkeeping, no tape): a @ b or a @ b^T */
function matMul(gpu: WebGpuBackend, a: tf.TensorInfo, b: tf.TensorInfo, transposeB: boolean): tf.TensorInfo {
  const kernel = tf.getKernel("BatchMatMul", "webgpu");
  if (!kernel) throw new Error("tfjs-webgpu has no BatchMatMul kernel");
  return kernel.kernelFunc({ inputs: { a, b }, backend: gpu as unknown as tf.KernelBackend, attrs: { transposeA: false, transposeB } }) as tf.TensorInfo;
}

let registered = false;

/** Registers kiln's fused kernels on the webgpu backend (once; the package must be loaded). */
export function registerWebgpuKernels(): void {
  if (registered) return;
  for (const [kernelName, kernelFunc] of Object.entries(webgpuKernels)) tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc });
  registered = true;
}
