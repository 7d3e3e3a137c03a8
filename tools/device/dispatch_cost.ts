// `KILN_BACKEND=webgpu node dist/tools/device/dispatch_cost.js`: what each WebGPU call that
// tfjs-webgpu makes for one dispatch costs the host through the webgpu package (Dawn), one call
// kind at a time, on whatever adapter Dawn takes. A GPU step of a small model is thousands of
// dispatches and the GPU waits on them (docs/benchmarks.md), so this says which of them to save.
import { initBackend, tf } from "../../src/tensor/backend.js";

const info = await initBackend();
if (info.name !== "webgpu") throw new Error(`dispatch_cost measures the webgpu backend (KILN_BACKEND=webgpu); got ${info.name}`);
interface Backend {
  device: GPUDevice;
  pipelineCache: Record<string, GPUComputePipeline | Promise<GPUComputePipeline>>;
  makeUniforms(u: { type: string; data: number[] }[]): { buffer: GPUBuffer };
  bufferManager: { releaseBuffer(b: GPUBuffer): void };
  /** uniform buffers tfjs hands back to its pool at the next submit */
  uniformPendingDisposal: GPUBuffer[];
}
const gpu = tf.backend() as unknown as Backend;
const device = gpu.device;
// one tfjs program compiled (an elementwise add on enough elements that tfjs does not hand it to the CPU)
const x = tf.ones([65536]);
const y = tf.add(x, x);
await y.data();
tf.dispose([x, y]);
const pipeline = Object.values(gpu.pipelineCache).find((p): p is GPUComputePipeline => !(p instanceof Promise));
if (!pipeline) throw new Error("dispatch_cost: no compiled pipeline to measure with");

const N = 20000;
function perCall(name: string, f: () => unknown, n = N): void {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) f();
  console.log(`| ${name} | ${(((performance.now() - t0) * 1000) / n).toFixed(2)} |`);
}
const storage = () => device.createBuffer({ size: 262144, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
const [out, a, b] = [storage(), storage(), storage()];
const uniform = device.createBuffer({ size: 256, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
const bytes = new ArrayBuffer(64);
const layout = pipeline.getBindGroupLayout(0);
const entries = [out, a, b].map((buffer, i) => ({ binding: i, resource: { buffer } })).concat([{ binding: 3, resource: { buffer: uniform } }]);
console.log(`backend ${info.name} (${info.device ?? "?"}); ${N} calls each; the add program's pipeline`);
console.log("| call | us a call |");
console.log("|---|---|");
perCall("pipeline.getBindGroupLayout(0)", () => pipeline.getBindGroupLayout(0));
perCall("queue.writeBuffer (64 bytes)", () => device.queue.writeBuffer(uniform, 0, bytes, 0, 64));
perCall("createBindGroup (4 buffers)", () => device.createBindGroup({ layout, entries }));
const fields = [[NaN], [Infinity], [65536], [1], [65536], [1], [65536]].map((data, i) => ({ type: i < 2 ? "float32" : "int32", data }));
perCall("tfjs makeUniforms (7 fields), buffer back to the pool", () => {
  gpu.makeUniforms(fields);
  gpu.bufferManager.releaseBuffer(gpu.uniformPendingDisposal.pop()!);
});
const group = device.createBindGroup({ layout, entries });
const encoder = device.createCommandEncoder();
const pass = encoder.beginComputePass();
perCall("pass.setPipeline", () => pass.setPipeline(pipeline));
perCall("pass.setBindGroup", () => pass.setBindGroup(0, group));
perCall("pass.dispatchWorkgroups", () => pass.dispatchWorkgroups(1, 1, 1));
pass.end();
device.queue.submit([encoder.finish()]);
await device.queue.onSubmittedWorkDone();
// (the adapter may run the work inside submit, as Dawn's OpenGL ES backend does: then this is not host cost alone)
const z = tf.zeros([65536]);
perCall("tf.add on 65,536 floats (a whole tfjs kernel: engine, program, dispatch)", () => tf.dispose(tf.add(z, z)), 2000);
await z.data();
z.dispose();
for (const buffer of [out, a, b, uniform]) buffer.destroy();
