// kiln_blas: OpenBLAS sgemm for tfjs tensors, through Node-API (no C++ wrapper needed).
// The JS side (src/tensor/native.ts) registers it as the matMul kernel of kiln's "native"
// backend; everything else runs in tfjs's cpu backend.
#include <cblas.h>
#include <math.h>
#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <pthread.h>

// glibc's libmvec has SIMD versions of expf; declaring them lets the compiler vectorize the
// exp-heavy loops (softmax, SwiGLU, KL) without -ffast-math, whose finite-math assumptions would
// break NaN propagation elsewhere. (glibc declares this only under __FAST_MATH__.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((simd("notinbranch"))) extern float expf(float);
#endif

#define CHECK(call)                                             \
  do {                                                          \
    if ((call) != napi_ok) {                                    \
      napi_throw_error(env, NULL, "kiln_blas: " #call " failed"); \
      return NULL;                                              \
    }                                                           \
  } while (0)

// The data of typed array `v` of type `want`, its element count in *length; NULL when it threw.
static void* typed_data(napi_env env, napi_value v, napi_typedarray_type want, size_t* length, const char* type_error) {
  napi_typedarray_type type;
  void* data;
  napi_value buffer;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, &data, &buffer, &offset) != napi_ok || type != want) {
    napi_throw_type_error(env, NULL, type_error);
    return NULL;
  }
  // An empty array has no data pointer; NULL here means "threw", so hand out a valid one.
  static double empty[1];
  return data ? data : empty;
}

static float* float_array(napi_env env, napi_value v, size_t* length) {
  return typed_data(env, v, napi_float32_array, length, "kiln_blas: expected a Float32Array");
}

// Products with a side this short and at most this many multiply-adds run on one thread (see
// gemm); a batch of 16 decoded rows through a 49k-vocabulary LM head (450M) still splits.
#define SKINNY 32
#define SKINNY_MAX_WORK (1 << 22)

// C = alpha op(A) op(B) + beta C, row-major; op(A) [M, K], op(B) [K, N], C [M, N].
// A product with one row or one column is a matrix-vector product: OpenBLAS's sgemm packs the
// whole matrix first, which for decode's single token read each weight from memory twice (sgemv
// reads it once: 1.75x faster on a 576x1536 weight not in cache).
// With K == 0 the product is empty: C = beta C (OpenBLAS rejects a zero leading dimension and
// leaves C as it was, which for a reused output array is old data).
static void scale_rows(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

// --- a few rows times a weight matrix, for batched decode: C [M, N] = alpha A [M, K] B [K, N]
// + beta C, M <= FEW_ROWS. OpenBLAS's sgemm packs all of B before multiplying, so 2 to 8 rows
// through a 576x49152 LM head took 3x one row's sgemv (10.5 against 3.4 ms): the packing reads
// and writes every weight before the product reads it again. Here each weight is read from
// memory once per 4 rows, their sums held in registers, and every row's sum runs over k in the
// same order whatever M is, so a row's result does not depend on which rows share its product
// (a row decoded alone goes to sgemv instead, whose sums may round otherwise in the last bits).
#define FEW_ROWS 8
#define FEW_CHUNK 32   // columns per register block: 4 vectors of 8 floats per row
// Rows of B read together: the next chunk of columns continues each of these rows, so the
// hardware prefetcher follows FEW_KBLOCK sequential streams (a whole column of 576 strided lines
// at once read a 576x49152 weight at a third of the speed); the partial sums wait in C meanwhile.
#define FEW_KBLOCK 32
#define FEW_THREADED_WORK (1 << 24)  // multiply-adds below which a second thread costs more than it saves

typedef float few_v8 __attribute__((vector_size(32), aligned(4)));

struct few_rows {
  int64_t M, N, K;
  float alpha, beta;  // beta must be 0: C holds partial sums meanwhile
  const float *A, *B;
  float* C;
};

// Rows [m0, m0 + R) and column chunks [from, to) (FEW_CHUNK columns each; the last may be short).
#define FEW_ROWS_BODY                                                                                        \
  for (int64_t k0 = 0; k0 < j->K; k0 += FEW_KBLOCK) {                                                        \
    const int64_t k1 = k0 + FEW_KBLOCK < j->K ? k0 + FEW_KBLOCK : j->K;                                      \
    const float scale = k1 == j->K ? j->alpha : 1.0f;                                                        \
    for (int64_t chunk = from; chunk < to; chunk++) {                                                        \
      const int64_t n = chunk * FEW_CHUNK;                                                                   \
      if (n + FEW_CHUNK <= j->N) {                                                                           \
        few_v8 acc[4][4];                                                                                    \
        for (int r = 0; r < R; r++)                                                                          \
          for (int v = 0; v < 4; v++)                                                                        \
            acc[r][v] = k0 == 0 ? (few_v8){0} : *(const few_v8*)(j->C + (m0 + r) * j->N + n + v * 8);       \
        for (int64_t k = k0; k < k1; k++) {                                                                  \
          const float* b = j->B + k * j->N + n;                                                              \
          const few_v8 b0 = *(const few_v8*)b, b1 = *(const few_v8*)(b + 8), b2 = *(const few_v8*)(b + 16),  \
                       b3 = *(const few_v8*)(b + 24);                                                        \
          for (int r = 0; r < R; r++) {                                                                      \
            const float a = j->A[(m0 + r) * j->K + k];                                                       \
            acc[r][0] += a * b0;                                                                             \
            acc[r][1] += a * b1;                                                                             \
            acc[r][2] += a * b2;                                                                             \
            acc[r][3] += a * b3;                                                                             \
          }                                                                                                  \
        }                                                                                                    \
        for (int r = 0; r < R; r++)                                                                          \
          for (int v = 0; v < 4; v++) *(few_v8*)(j->C + (m0 + r) * j->N + n + v * 8) = scale * acc[r][v];    \
      } else {                                                                                               \
        /* the last columns, fewer than a chunk: one sum per output, over k in the same order */            \
        for (int r = 0; r < R; r++)                                                                          \
          for (int64_t col = n; col < j->N; col++) {                                                         \
            float* c = j->C + (m0 + r) * j->N + col;                                                         \
            float s = k0 == 0 ? 0.0f : *c;                                                                   \
            for (int64_t k = k0; k < k1; k++) s += j->A[(m0 + r) * j->K + k] * j->B[k * j->N + col];        \
            *c = scale * s;                                                                                  \
          }                                                                                                  \
      }                                                                                                      \
    }                                                                                                        \
  }

#define FEW_ROWS_FN(NAME, ATTR, R_)                                                                          \
  ATTR static void NAME(const struct few_rows* j, int64_t m0, int64_t from, int64_t to) {                    \
    enum { R = R_ };                                                                                         \
    FEW_ROWS_BODY                                                                                            \
  }

#if defined(__x86_64__)
// AVX2 with fused multiply-adds where the CPU has them (picked at run time: the addon is built
// for any x86-64); the sums' order is the same either way, only their rounding differs.
#define FEW_FAST __attribute__((target("avx2,fma"), optimize("fp-contract=fast")))
FEW_ROWS_FN(few_rows_fast1, FEW_FAST, 1)
FEW_ROWS_FN(few_rows_fast2, FEW_FAST, 2)
FEW_ROWS_FN(few_rows_fast3, FEW_FAST, 3)
FEW_ROWS_FN(few_rows_fast4, FEW_FAST, 4)
#endif
FEW_ROWS_FN(few_rows_plain1, , 1)
FEW_ROWS_FN(few_rows_plain2, , 2)
FEW_ROWS_FN(few_rows_plain3, , 3)
FEW_ROWS_FN(few_rows_plain4, , 4)

typedef void (*few_fn)(const struct few_rows*, int64_t, int64_t, int64_t);

// Whether the FEW_FAST versions (AVX2 with FMA) run here: asked of the CPU once.
static bool cpu_fast(void) {
#if defined(__x86_64__)
  static int fast = -1;
  if (fast < 0) fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return fast;
#else
  return false;
#endif
}

static few_fn few_rows_kernel(int rows) {
#if defined(__x86_64__)
  if (cpu_fast()) return (few_fn[]){few_rows_fast1, few_rows_fast2, few_rows_fast3, few_rows_fast4}[rows - 1];
#endif
  return (few_fn[]){few_rows_plain1, few_rows_plain2, few_rows_plain3, few_rows_plain4}[rows - 1];
}

// Column chunks [from, to) for every row, 4 rows at a time.
static void few_rows_part(const void* ctx, int64_t from, int64_t to) {
  const struct few_rows* j = ctx;
  for (int64_t m0 = 0; m0 < j->M; m0 += 4) {
    const int rows = j->M - m0 < 4 ? (int)(j->M - m0) : 4;
    few_rows_kernel(rows)(j, m0, from, to);
  }
}

typedef void (*rows_fn)(const void* ctx, int64_t from, int64_t to);
static void parallel_rows_on(int threads, int64_t rows, int64_t work_per_row, rows_fn fn, const void* ctx);

// Whether C = alpha A B (+ 0 C) goes to the few-rows product: 2 to FEW_ROWS rows, neither side
// transposed, and B wide enough for whole chunks; columns split across threads when big (an LM
// head). One row stays with sgemv, whose own threads were faster on a quiet machine (576x1536:
// 0.04 ms against 0.09 here on one thread and 0.06 on two, each thread started per call).
static bool few_rows_gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, const float* B, float beta, float* C) {
  if (tA || tB || M < 2 || M > FEW_ROWS || N < 4 * FEW_CHUNK || K < 1 || beta != 0.0f) return false;
  const struct few_rows j = {M, N, K, alpha, beta, A, B, C};
  const int64_t chunks = (N + FEW_CHUNK - 1) / FEW_CHUNK;
  const int threads = openblas_get_num_threads();
  if (threads > 1 && M * N * K >= FEW_THREADED_WORK) parallel_rows_on(threads, chunks, 1 << 20, few_rows_part, &j);
  else few_rows_part(&j, 0, chunks);
  return true;
}

static void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, const float* B, float beta, float* C) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_rows(M, N, beta, C, N);
    return;
  }
  // 2 to FEW_ROWS decoded rows through a weight: each weight read once for all of them.
  if (few_rows_gemm(tA, tB, M, N, K, alpha, A, B, beta, C)) return;
  if (M == 1 && K > 0) {
    // C [1, N] = a [K] times op(B): B is [K, N] (its transpose times a) or [N, K].
    if (tB) cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)N, (int)K, alpha, B, (int)K, A, 1, beta, C, 1);
    else cblas_sgemv(CblasRowMajor, CblasTrans, (int)K, (int)N, alpha, B, (int)N, A, 1, beta, C, 1);
    return;
  }
  if (N == 1 && K > 0) {
    // C [M, 1] = op(A) times b [K]: A is [M, K] or [K, M] (its transpose).
    if (tA) cblas_sgemv(CblasRowMajor, CblasTrans, (int)K, (int)M, alpha, A, (int)M, B, 1, beta, C, 1);
    else cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)M, (int)K, alpha, A, (int)K, B, 1, beta, C, 1);
    return;
  }
  // A small product with a side of a LoRA rank's size is too little work to split: OpenBLAS wakes its
  // threads for any product over 2^18 multiply-adds, and [256,576]x[576,8] took 1.2 ms on two
  // threads of a busy machine against 0.05 ms on one (the 576x576 product beside it: 1.4 vs 1.0).
  const int threads = openblas_get_num_threads();
  const bool skinny = threads > 1 && (M <= SKINNY || N <= SKINNY || K <= SKINNY) && M * N * K <= SKINNY_MAX_WORK;
  if (skinny) openblas_set_num_threads(1);
  cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A,
              tA ? (int)M : (int)K, B, tB ? (int)K : (int)N, beta, C, (int)N);
  if (skinny) openblas_set_num_threads(threads);
}

// One contiguous range [from, to) of a batched product.
struct gemm_batch {
  bool transA, transB;
  int32_t M, N, K;
  const float *A, *B;
  float* C;
  int64_t strideA, strideB;
  int32_t from, to;
};

static void* run_gemm_batch(void* arg) {
  const struct gemm_batch* g = arg;
  for (int32_t i = g->from; i < g->to; i++) {
    gemm(g->transA, g->transB, g->M, g->N, g->K, 1.0f, g->A + i * g->strideA, g->B + i * g->strideB, 0.0f, g->C + (size_t)i * g->M * g->N);
  }
  return NULL;
}

// Products up to this many multiply-adds run one per thread in a batch (see sgemm).
#define SMALL_GEMM (1 << 22)
#define MAX_GEMM_THREADS 16
// Below this many multiply-adds in all, starting threads costs more than the products (decode).
#define MIN_THREADED_BATCH (1 << 18)

// Rows [from, to) of a kernel whose rows are independent (rows_fn: see few_rows_gemm).
struct rows_part {
  rows_fn fn;
  const void* ctx;
  int64_t from, to;
};

static void* run_rows(void* arg) {
  const struct rows_part* p = arg;
  p->fn(p->ctx, p->from, p->to);
  return NULL;
}

// Below this much work (floats touched), handing a part to another thread costs more than it saves.
#define PARALLEL_MIN_WORK (1 << 15)

// Worker threads kept between calls. Starting a thread for each call (pthread_create + join) cost
// 60 us here, more than the work of many kernels of a small model's bake step (RoPE on kiln-mini's
// [2, 128, 2, 64] keys: 133 us a call, its arithmetic a fraction of that). A worker sleeps on `wake`
// until a job's generation is new, runs its part if the job has one for it, and the last to finish
// signals `done`. One caller at a time: another thread calling meanwhile (a nested call, or a
// Node worker sharing the addon) starts threads of its own as before.
static struct {
  pthread_mutex_t busy;  // held by the caller whose job the pool runs
  pthread_mutex_t lock;  // guards the rest
  pthread_cond_t wake, done;
  int workers;  // started so far (ids 1..workers; the caller takes part 0)
  unsigned long generation;
  int parts, pending;  // the job's parts, and those not finished by workers
  struct rows_part part[MAX_GEMM_THREADS];
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, {{0}}};

static void* pool_worker(void* arg) {
  const int id = (int)(intptr_t)arg;
  unsigned long seen = 0;
  pthread_mutex_lock(&pool.lock);
  for (;;) {
    while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
    seen = pool.generation;
    if (id >= pool.parts) continue;  // a job of fewer parts than workers
    const struct rows_part part = pool.part[id];
    pthread_mutex_unlock(&pool.lock);
    run_rows(&part);
    pthread_mutex_lock(&pool.lock);
    if (--pool.pending == 0) pthread_cond_signal(&pool.done);
  }
  return NULL;
}

// Runs parts[0..n) with parts[1..n) on the pool's workers; false (nothing run) when the pool is busy
// or cannot start enough workers.
static bool pool_run(int n, const struct rows_part* parts) {
  if (pthread_mutex_trylock(&pool.busy) != 0) return false;
  pthread_mutex_lock(&pool.lock);
  while (pool.workers < n - 1) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    const bool ok = pthread_create(&t, &attr, pool_worker, (void*)(intptr_t)(pool.workers + 1)) == 0;
    pthread_attr_destroy(&attr);
    if (!ok) break;
    pool.workers++;
  }
  if (pool.workers < n - 1) {
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
    return false;
  }
  for (int t = 0; t < n; t++) pool.part[t] = parts[t];
  pool.parts = n;
  pool.pending = n - 1;
  pool.generation++;
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);
  run_rows(&parts[0]);
  pthread_mutex_lock(&pool.lock);
  while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&pool.busy);
  return true;
}

// Splits rows [0, rows) across the BLAS thread count (two cores here), the calling thread taking
// the first part; small jobs run on the calling thread alone. PyTorch splits its elementwise and
// softmax loops the same way.
static void parallel_rows_on(int threads, int64_t rows, int64_t work_per_row, rows_fn fn, const void* ctx) {
  int n = threads;
  if (n > MAX_GEMM_THREADS) n = MAX_GEMM_THREADS;
  if (n > rows) n = (int)rows;
  if (n < 2 || rows * work_per_row < PARALLEL_MIN_WORK) {
    fn(ctx, 0, rows);
    return;
  }
  struct rows_part parts[MAX_GEMM_THREADS];
  for (int t = 0; t < n; t++) parts[t] = (struct rows_part){fn, ctx, rows * t / n, rows * (t + 1) / n};
  if (pool_run(n, parts)) return;
  pthread_t started_threads[MAX_GEMM_THREADS];
  int started = 0;
  for (int t = 1; t < n; t++) {
    if (pthread_create(&started_threads[t], NULL, run_rows, &parts[t]) == 0) started |= 1 << t;
    else run_rows(&parts[t]);  // no thread: do it here
  }
  run_rows(&parts[0]);
  for (int t = 1; t < n; t++)
    if (started & (1 << t)) pthread_join(started_threads[t], NULL);
}

static void parallel_rows(int64_t rows, int64_t work_per_row, rows_fn fn, const void* ctx) {
  parallel_rows_on(openblas_get_num_threads(), rows, work_per_row, fn, ctx);
}

// Runs fn over items, a part per thread, each part's products single-threaded (OpenBLAS is told
// one thread meanwhile, so its own split does not fight ours).
static void parallel_products(int threads, int64_t items, rows_fn fn, const void* ctx) {
  openblas_set_num_threads(1);
  parallel_rows_on(threads, items, PARALLEL_MIN_WORK, fn, ctx);
  openblas_set_num_threads(threads);
}

static void gemm_rows(const void* ctx, int64_t from, int64_t to) {
  struct gemm_batch part = *(const struct gemm_batch*)ctx;
  part.from = (int32_t)from;
  part.to = (int32_t)to;
  run_gemm_batch(&part);
}

// sgemm(transA, transB, M, N, K, A, B, C, batch, strideA, strideB)
//   C[i] = op(A[i]) @ op(B[i]) for i < batch; A[i] = A + i*strideA (0 broadcasts one matrix).
//   Row-major; op(A) is [M, K], op(B) is [K, N], C[i] is [M, N].
static napi_value sgemm(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 11) {
    napi_throw_error(env, NULL, "kiln_blas.sgemm: expected 11 arguments");
    return NULL;
  }
  bool transA, transB;
  int32_t M, N, K, batch;
  int64_t strideA, strideB;
  CHECK(napi_get_value_bool(env, argv[0], &transA));
  CHECK(napi_get_value_bool(env, argv[1], &transB));
  CHECK(napi_get_value_int32(env, argv[2], &M));
  CHECK(napi_get_value_int32(env, argv[3], &N));
  CHECK(napi_get_value_int32(env, argv[4], &K));
  size_t lenA, lenB, lenC;
  float* A = float_array(env, argv[5], &lenA);
  if (!A) return NULL;
  float* B = float_array(env, argv[6], &lenB);
  if (!B) return NULL;
  float* C = float_array(env, argv[7], &lenC);
  if (!C) return NULL;
  CHECK(napi_get_value_int32(env, argv[8], &batch));
  CHECK(napi_get_value_int64(env, argv[9], &strideA));
  CHECK(napi_get_value_int64(env, argv[10], &strideB));
  // Bounds: the JS side computes shapes, but a wrong one must throw, not write out of bounds.
  if (M < 0 || N < 0 || K < 0 || batch < 1 ||
      (size_t)(strideA * (batch - 1)) + (size_t)M * K > lenA ||
      (size_t)(strideB * (batch - 1)) + (size_t)K * N > lenB ||
      (size_t)batch * M * N > lenC) {
    napi_throw_range_error(env, NULL, "kiln_blas.sgemm: shapes do not fit the arrays");
    return NULL;
  }
  struct gemm_batch job = {transA, transB, M, N, K, A, B, C, strideA, strideB, 0, batch};
  const int threads = openblas_get_num_threads();
  const int64_t work = (int64_t)M * N * K;
  if (batch > 1 && threads > 1 && work <= SMALL_GEMM && work * batch >= MIN_THREADED_BATCH) {
    // Many small products (attention heads): OpenBLAS splits each one across its threads, and
    // for matrices this small the split costs more than it saves. Give each thread whole
    // products instead, each run single-threaded.
    parallel_products(threads, batch, gemm_rows, &job);
  } else {
    run_gemm_batch(&job);
  }
  return NULL;
}

// --- elementwise with broadcasting, softmax and transpose: tfjs's JavaScript versions of these
// took more time than the matmuls themselves. Shapes arrive as arrays of at most MAX_RANK dims.

#define MAX_RANK 8

static int read_shape(napi_env env, napi_value v, int64_t* dims) {
  uint32_t n;
  if (napi_get_array_length(env, v, &n) != napi_ok || n > MAX_RANK) return -1;
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    if (napi_get_element(env, v, i, &e) != napi_ok || napi_get_value_int64(env, e, &dims[i]) != napi_ok) return -1;
  }
  return (int)n;
}

// Steps a row-major multi-index over dims [0, rank) like an odometer.
static inline void advance(int64_t* idx, const int64_t* shape, int rank) {
  for (int d = rank - 1; d >= 0; d--) {
    if (++idx[d] < shape[d]) return;
    idx[d] = 0;
  }
}

// idx = the multi-index of flat position r in shape[0..rank).
static void unravel(int64_t r, const int64_t* shape, int rank, int64_t* idx) {
  for (int d = rank - 1; d >= 0; d--) {
    idx[d] = shape[d] ? r % shape[d] : 0;
    r = shape[d] ? r / shape[d] : 0;
  }
}

static int64_t numel(const int64_t* dims, int rank) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= dims[i];
  return n;
}

// binary(op, a, aShape, b, bShape, out, outShape): op 0 add, 1 sub, 2 mul, 3 div.
// aShape and bShape are already right-aligned to outShape's rank (1s where broadcast).
struct binary_job {
  int op;
  const float *a, *b;
  float* out;
  const int64_t *sa, *sb, *os;  // strides (0 where broadcast) and the output shape
  int rank;
  int64_t inner;
};

// Output rows [from, to) of a broadcasting binary op (rows = all but the last dimension).
static void binary_rows(const void* ctx, int64_t from, int64_t to) {
  const struct binary_job* j = ctx;
  const int ro = j->rank;
  const int64_t inner = j->inner, ia = j->sa[ro - 1], ib = j->sb[ro - 1];
  int64_t idx[MAX_RANK] = {0};
  unravel(from, j->os, ro - 1, idx);
  for (int64_t r = from; r < to; r++) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < ro - 1; d++) {
      oa += idx[d] * j->sa[d];
      ob += idx[d] * j->sb[d];
    }
    float* restrict o = j->out + r * inner;
    const float* pa = j->a + oa;
    const float* pb = j->b + ob;
    if (ia == 1 && ib == 1) {  // same shape along the row: contiguous, vectorizes
      switch (j->op) {
        case 0: for (int64_t c = 0; c < inner; c++) o[c] = pa[c] + pb[c]; break;
        case 1: for (int64_t c = 0; c < inner; c++) o[c] = pa[c] - pb[c]; break;
        case 2: for (int64_t c = 0; c < inner; c++) o[c] = pa[c] * pb[c]; break;
        default: for (int64_t c = 0; c < inner; c++) o[c] = pa[c] / pb[c]; break;
      }
    } else {
      switch (j->op) {
        case 0: for (int64_t c = 0; c < inner; c++) o[c] = pa[c * ia] + pb[c * ib]; break;
        case 1: for (int64_t c = 0; c < inner; c++) o[c] = pa[c * ia] - pb[c * ib]; break;
        case 2: for (int64_t c = 0; c < inner; c++) o[c] = pa[c * ia] * pb[c * ib]; break;
        default: for (int64_t c = 0; c < inner; c++) o[c] = pa[c * ia] / pb[c * ib]; break;
      }
    }
    advance(idx, j->os, ro - 1);
  }
}

static napi_value binary(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t op;
  CHECK(napi_get_value_int32(env, argv[0], &op));
  size_t la, lb, lo;
  float* a = float_array(env, argv[1], &la);
  if (!a) return NULL;
  float* b = float_array(env, argv[3], &lb);
  if (!b) return NULL;
  float* out = float_array(env, argv[5], &lo);
  if (!out) return NULL;
  int64_t as[MAX_RANK], bs[MAX_RANK], os[MAX_RANK];
  int ra = read_shape(env, argv[2], as), rb = read_shape(env, argv[4], bs), ro = read_shape(env, argv[6], os);
  if (ra != ro || rb != ro || ro < 1 || (size_t)numel(as, ra) != la || (size_t)numel(bs, rb) != lb || (size_t)numel(os, ro) != lo) {
    napi_throw_range_error(env, NULL, "kiln_blas.binary: shapes do not fit the arrays");
    return NULL;
  }
  // Strides, 0 along broadcast dimensions.
  int64_t sa[MAX_RANK], sb[MAX_RANK];
  int64_t ka = 1, kb = 1;
  for (int i = ro - 1; i >= 0; i--) {
    sa[i] = as[i] == 1 ? 0 : ka;
    sb[i] = bs[i] == 1 ? 0 : kb;
    ka *= as[i];
    kb *= bs[i];
  }
  const int64_t inner = os[ro - 1];
  const struct binary_job job = {op, a, b, out, sa, sb, os, ro, inner};
  // one thread: a copy-like loop is bound by memory, and a second thread cost more than it saved
  binary_rows(&job, 0, (int64_t)lo / (inner ? inner : 1));
  return NULL;
}

// softmax(x, out, rows, cols): over the last axis, max-subtracted.
// exp of 8 floats: 2^n exp(r), n = round(x log2 e), r = x - n ln 2 (ln 2 in two parts, so r keeps
// its low bits), exp(r) by Cephes' degree-7 polynomial for expf (within 2 ulp of expf over the
// range). Own code rather than libmvec's vector expf: that hands a whole vector to the scalar
// expf, lane by lane, when one lane underflows, and a causal mask's -1e9 put half of attention's
// scores there (its softmax took 1.1 ms of 2.0 at 128 tokens, 135M shape: 3x both products).
// Below EXP_LOW gives 0 (expf: at most 2.7e-38, subnormal below -87.3), NaN gives NaN; above EXP_HIGH the
// caller asks expf (a softmax's arguments are at most 0 and never do).
#define EXP_LOW -86.5f   // n >= -125 here, so 2^n times the polynomial (>= 0.7) stays normal
#define EXP_HIGH 88.0f   // n <= 127
typedef int32_t few_i8 __attribute__((vector_size(32), aligned(4)));
static inline __attribute__((always_inline)) few_v8 exp8(few_v8 x) {
  const few_i8 low = x < EXP_LOW, keep = x == x;  // lanes of all ones where true
  const few_v8 c = (few_v8)(((few_i8)x & ~low) | ((few_i8)((few_v8){0} + EXP_LOW) & low));
  const few_v8 t = c * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: rounds to an integer
  const few_v8 n = t - 12582912.0f;
  const few_v8 r = (c - n * 0.693359375f) - n * -2.12194440e-4f;
  few_v8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const few_i8 scaled = (few_i8)p + (((few_i8)t - 0x4B400000) << 23);  // t's low bits hold n
  return (few_v8)((scaled & ~low & keep) | ((few_i8)x & ~keep));
}

// sum over i < n of exp(x[i] * scale + add[i] - shift) (add may be NULL), stored to out when out
// is not NULL: 8 lanes summed in float (a lane holds at most n/8 terms), then in double.
#define SUM_EXP_BODY                                                              \
  few_v8 lane = {0};                                                              \
  for (int64_t i = 0; i < n; i += 8) {                                            \
    const int64_t m = n - i < 8 ? n - i : 8;                                      \
    few_v8 a = {0}, e;                                                            \
    if (m == 8) {                                                                 \
      a = *(const few_v8*)(x + i) * scale;                                        \
      if (add) a += *(const few_v8*)(add + i);                                    \
    } else {                                                                      \
      /* the lanes past the row: -inf, whose exp is 0 (a 0 there, less a masked row's max of -1e9, went to expf) */ \
      for (int64_t k = 0; k < 8; k++) a[k] = k < m ? x[i + k] * scale + (add ? add[i + k] : 0.0f) : -INFINITY; \
    }                                                                             \
    a -= shift;                                                                   \
    e = exp8(a);                                                                  \
    const few_i8 over = a > EXP_HIGH;                                             \
    if (over[0] | over[1] | over[2] | over[3] | over[4] | over[5] | over[6] | over[7]) \
      for (int k = 0; k < 8; k++) e[k] = over[k] ? expf(a[k]) : e[k];            \
    if (m < 8)                                                                    \
      for (int64_t k = m; k < 8; k++) e[k] = 0.0f;                                \
    if (out) {                                                                    \
      if (m == 8) *(few_v8*)(out + i) = e;                                        \
      else for (int64_t k = 0; k < m; k++) out[i + k] = e[k];                     \
    }                                                                             \
    lane += e;                                                                    \
  }                                                                               \
  double s = 0;                                                                   \
  for (int k = 0; k < 8; k++) s += lane[k];                                       \
  return s;
#define SUM_EXP_FN(NAME, ATTR) \
  ATTR static double NAME(const float* x, float scale, const float* add, float shift, float* out, int64_t n) { SUM_EXP_BODY }
#if defined(__x86_64__)
SUM_EXP_FN(sum_exp_fast, FEW_FAST)
#else
#define sum_exp_fast sum_exp_plain
#endif
SUM_EXP_FN(sum_exp_plain, )

static double sum_exp(const float* x, float scale, const float* add, float shift, float* out, int64_t n) {
  return (cpu_fast() ? sum_exp_fast : sum_exp_plain)(x, scale, add, shift, out, n);
}

static float row_max(const float* x, int64_t V) {
  float m = x[0];
  for (int64_t v = 1; v < V; v++) m = x[v] > m ? x[v] : m;
  return m;
}

static double row_logsumexp(const float* x, int64_t V) {
  const float m = row_max(x, V);
  return m + log(sum_exp(x, 1.0f, NULL, m, NULL, V));
}

struct softmax_job {
  const float* x;
  float* out;
  int64_t cols;
};

static void softmax_rows(const void* ctx, int64_t from, int64_t to) {
  const struct softmax_job* j = ctx;
  for (int64_t r = from; r < to; r++) {
    const float* in = j->x + r * j->cols;
    float* o = j->out + r * j->cols;
    const float m = row_max(in, j->cols);
    const float inv = (float)(1.0 / sum_exp(in, 1.0f, NULL, m, o, j->cols));
    for (int64_t c = 0; c < j->cols; c++) o[c] *= inv;
  }
}

static void log_softmax_rows(const void* ctx, int64_t from, int64_t to) {
  const struct softmax_job* j = ctx;
  for (int64_t r = from; r < to; r++) {
    const float* in = j->x + r * j->cols;
    float* o = j->out + r * j->cols;
    // (x - max) - log(sum): x - logsumexp loses the sum where |max| dwarfs it (a row of -1e9s)
    const float m = row_max(in, j->cols), log_sum = (float)log(sum_exp(in, 1.0f, NULL, m, NULL, j->cols));
    for (int64_t c = 0; c < j->cols; c++) o[c] = (in[c] - m) - log_sum;
  }
}

static napi_value softmax_or_log(napi_env env, napi_callback_info info, bool take_log) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t lx, lo;
  float* x = float_array(env, argv[0], &lx);
  if (!x) return NULL;
  float* out = float_array(env, argv[1], &lo);
  if (!out) return NULL;
  int64_t rows, cols;
  CHECK(napi_get_value_int64(env, argv[2], &rows));
  CHECK(napi_get_value_int64(env, argv[3], &cols));
  if (rows * cols != (int64_t)lx || lx != lo) {
    napi_throw_range_error(env, NULL, "kiln_blas.softmax: shapes do not fit the arrays");
    return NULL;
  }
  const struct softmax_job job = {x, out, cols};
  parallel_rows(rows, cols, take_log ? log_softmax_rows : softmax_rows, &job);
  return NULL;
}

static napi_value softmax(napi_env env, napi_callback_info info) {
  return softmax_or_log(env, info, false);
}

// log_softmax(x, out, rows, cols): out = x - logsumexp(x) per row.
static napi_value log_softmax(napi_env env, napi_callback_info info) {
  return softmax_or_log(env, info, true);
}

// transpose(x, shape, perm, out): out's dimension i is x's dimension perm[i].
struct transpose_job {
  const float* x;
  float* out;
  const int64_t *stride, *outShape;  // input stride of each output dimension
  int rank;
  int64_t inner;
};

static void transpose_rows(const void* ctx, int64_t from, int64_t to) {
  const struct transpose_job* j = ctx;
  const int rank = j->rank;
  const int64_t inner = j->inner, is = j->stride[rank - 1];
  int64_t idx[MAX_RANK] = {0};
  unravel(from, j->outShape, rank - 1, idx);
  for (int64_t r = from; r < to; r++) {
    int64_t off = 0;
    for (int d = 0; d < rank - 1; d++) off += idx[d] * j->stride[d];
    float* restrict o = j->out + r * inner;
    const float* p = j->x + off;
    for (int64_t c = 0; c < inner; c++) o[c] = p[c * is];
    advance(idx, j->outShape, rank - 1);
  }
}

static napi_value transpose(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  size_t lx, lo;
  float* x = float_array(env, argv[0], &lx);
  if (!x) return NULL;
  float* out = float_array(env, argv[3], &lo);
  if (!out) return NULL;
  int64_t shape[MAX_RANK], perm[MAX_RANK];
  int rank = read_shape(env, argv[1], shape);
  int rp = read_shape(env, argv[2], perm);
  if (rank < 1 || rp != rank || (size_t)numel(shape, rank) != lx || lx != lo) {
    napi_throw_range_error(env, NULL, "kiln_blas.transpose: shapes do not fit the arrays");
    return NULL;
  }
  int64_t inStride[MAX_RANK], outShape[MAX_RANK], stride[MAX_RANK];
  int64_t k = 1;
  for (int i = rank - 1; i >= 0; i--) {
    inStride[i] = k;
    k *= shape[i];
  }
  for (int i = 0; i < rank; i++) {
    if (perm[i] < 0 || perm[i] >= rank) {
      napi_throw_range_error(env, NULL, "kiln_blas.transpose: bad permutation");
      return NULL;
    }
    outShape[i] = shape[perm[i]];
    stride[i] = inStride[perm[i]];
  }
  const int64_t inner = outShape[rank - 1];
  const struct transpose_job job = {x, out, stride, outShape, rank, inner};
  transpose_rows(&job, 0, (int64_t)lo / (inner ? inner : 1));  // one thread, as binary
  return NULL;
}

// unary(op, x, out): 0 exp, 1 log, 2 neg, 3 sigmoid, 4 rsqrt, 5 square.
static napi_value unary(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t op;
  CHECK(napi_get_value_int32(env, argv[0], &op));
  size_t lx, lo;
  float* x = float_array(env, argv[1], &lx);
  if (!x) return NULL;
  float* o = float_array(env, argv[2], &lo);
  if (!o) return NULL;
  if (lx != lo) {
    napi_throw_range_error(env, NULL, "kiln_blas.unary: arrays differ in length");
    return NULL;
  }
  switch (op) {
    case 0: for (size_t i = 0; i < lx; i++) o[i] = expf(x[i]); break;
    case 1: for (size_t i = 0; i < lx; i++) o[i] = logf(x[i]); break;
    case 2: for (size_t i = 0; i < lx; i++) o[i] = -x[i]; break;
    case 3: for (size_t i = 0; i < lx; i++) o[i] = 1.0f / (1.0f + expf(-x[i])); break;
    case 4: for (size_t i = 0; i < lx; i++) o[i] = 1.0f / sqrtf(x[i]); break;
    default: for (size_t i = 0; i < lx; i++) o[i] = x[i] * x[i]; break;
  }
  return NULL;
}

// --- reductions and a fused RMSNorm: tfjs's JavaScript Mean/Sum and the dozen small kernels of
// an RMSNorm and its gradient cost more than their arithmetic on every layer.

// Reads `n` arguments or throws; returns false when it threw.
static bool args_of(napi_env env, napi_callback_info info, size_t n, napi_value* argv) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != n) {
    napi_throw_error(env, NULL, "kiln_blas: wrong number of arguments");
    return false;
  }
  return true;
}

static bool i64_of(napi_env env, napi_value v, int64_t* out) {
  if (napi_get_value_int64(env, v, out) != napi_ok) {
    napi_throw_type_error(env, NULL, "kiln_blas: expected an integer");
    return false;
  }
  return true;
}

// reduce(op, x, outer, n, inner, out): x viewed as [outer, n, inner] reduced over n into
// out [outer, inner]; op 0 sum, 1 mean, 2 max (NaN wins, as in tfjs). Sums accumulate in double.
static napi_value reduce(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!args_of(env, info, 6, argv)) return NULL;
  int64_t op, outer, n, inner;
  size_t lx, lo;
  if (!i64_of(env, argv[0], &op) || !i64_of(env, argv[2], &outer) || !i64_of(env, argv[3], &n) || !i64_of(env, argv[4], &inner)) return NULL;
  const float* x = float_array(env, argv[1], &lx);
  if (!x) return NULL;
  float* out = float_array(env, argv[5], &lo);
  if (!out) return NULL;
  if (op < 0 || op > 2 || outer < 0 || n < 1 || inner < 0 || (inner > 0 && outer > 0 && (size_t)outer > lx / (size_t)inner / (size_t)n) ||
      (size_t)outer * (size_t)n * (size_t)inner != lx || (size_t)outer * (size_t)inner != lo) {
    napi_throw_range_error(env, NULL, "kiln_blas.reduce: bad op or shapes that do not fit the arrays");
    return NULL;
  }
  double* acc = op == 2 || inner == 1 ? NULL : malloc(sizeof(double) * (size_t)inner);
  if (op != 2 && inner != 1 && inner > 0 && !acc) {
    napi_throw_error(env, NULL, "kiln_blas.reduce: out of memory");
    return NULL;
  }
  for (int64_t o = 0; o < outer; o++) {
    const float* base = x + o * n * inner;
    float* dst = out + o * inner;
    if (op == 2) {
      for (int64_t j = 0; j < inner; j++) dst[j] = base[j];
      for (int64_t k = 1; k < n; k++) {
        const float* row = base + k * inner;
        for (int64_t j = 0; j < inner; j++) dst[j] = isnan(row[j]) || row[j] > dst[j] ? row[j] : dst[j];
      }
      continue;
    }
    if (inner == 1) {  // the common case: a row reduced to one number
      double sum = 0;
      for (int64_t k = 0; k < n; k++) sum += base[k];
      dst[0] = (float)(op == 1 ? sum / (double)n : sum);
      continue;
    }
    for (int64_t j = 0; j < inner; j++) acc[j] = 0;
    for (int64_t k = 0; k < n; k++) {
      const float* row = base + k * inner;
      for (int64_t j = 0; j < inner; j++) acc[j] += row[j];
    }
    for (int64_t j = 0; j < inner; j++) dst[j] = (float)(op == 1 ? acc[j] / (double)n : acc[j]);
  }
  free(acc);
  return NULL;
}

// rmsnorm(x, w, eps, rows, cols, y): y = x * rstd * w per row, rstd = 1/sqrt(mean(x^2)+eps).
static napi_value rmsnorm(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!args_of(env, info, 6, argv)) return NULL;
  double eps;
  int64_t rows, cols;
  size_t lx, lw, ly;
  if (napi_get_value_double(env, argv[2], &eps) != napi_ok || !i64_of(env, argv[3], &rows) || !i64_of(env, argv[4], &cols)) return NULL;
  const float* x = float_array(env, argv[0], &lx);
  if (!x) return NULL;
  const float* w = float_array(env, argv[1], &lw);
  if (!w) return NULL;
  float* y = float_array(env, argv[5], &ly);
  if (!y) return NULL;
  if (cols < 1 || rows < 0 || (size_t)rows * (size_t)cols != lx || lx != ly || (size_t)cols != lw) {
    napi_throw_range_error(env, NULL, "kiln_blas.rmsnorm: shapes do not fit the arrays");
    return NULL;
  }
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double ss = 0;
    for (int64_t j = 0; j < cols; j++) ss += (double)xr[j] * xr[j];
    const float s = (float)(1.0 / sqrt(ss / (double)cols + eps));
    for (int64_t j = 0; j < cols; j++) yr[j] = xr[j] * s * w[j];
  }
  return NULL;
}

// rmsnorm_grad(dy, x, w, eps, rows, cols, dx, dw): with rstd recomputed per row and g = dy * w,
//   dx = rstd * g - x * rstd^3 * mean(g * x),   dw = sum over rows of dy * x * rstd.
static napi_value rmsnorm_grad(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  if (!args_of(env, info, 8, argv)) return NULL;
  double eps;
  int64_t rows, cols;
  size_t ld, lx, lw, ldx, ldw;
  if (napi_get_value_double(env, argv[3], &eps) != napi_ok || !i64_of(env, argv[4], &rows) || !i64_of(env, argv[5], &cols)) return NULL;
  const float* dy = float_array(env, argv[0], &ld);
  if (!dy) return NULL;
  const float* x = float_array(env, argv[1], &lx);
  if (!x) return NULL;
  const float* w = float_array(env, argv[2], &lw);
  if (!w) return NULL;
  float* dx = float_array(env, argv[6], &ldx);
  if (!dx) return NULL;
  float* dw = float_array(env, argv[7], &ldw);
  if (!dw) return NULL;
  if (cols < 1 || rows < 0 || (size_t)rows * (size_t)cols != lx || ld != lx || ldx != lx || (size_t)cols != lw || ldw != lw) {
    napi_throw_range_error(env, NULL, "kiln_blas.rmsnorm_grad: shapes do not fit the arrays");
    return NULL;
  }
  double* dwAcc = calloc((size_t)cols, sizeof(double));
  if (!dwAcc) {
    napi_throw_error(env, NULL, "kiln_blas.rmsnorm_grad: out of memory");
    return NULL;
  }
  for (int64_t r = 0; r < rows; r++) {
    const float* dyr = dy + r * cols;
    const float* xr = x + r * cols;
    float* dxr = dx + r * cols;
    double ss = 0, gx = 0;
    for (int64_t j = 0; j < cols; j++) {
      ss += (double)xr[j] * xr[j];
      gx += (double)dyr[j] * w[j] * xr[j];
    }
    const float s = (float)(1.0 / sqrt(ss / (double)cols + eps));
    const float c = (float)(gx / (double)cols) * s * s * s;
    for (int64_t j = 0; j < cols; j++) {
      dwAcc[j] += (double)dyr[j] * xr[j] * s;
      dxr[j] = s * dyr[j] * w[j] - xr[j] * c;
    }
  }
  for (int64_t j = 0; j < cols; j++) dw[j] = (float)dwAcc[j];
  free(dwAcc);
  return NULL;
}

// Reads `n` Float32Arrays of one length into a[]; false when it threw.
static bool same_length_arrays(napi_env env, napi_callback_info info, size_t n, float** a, size_t* len, const char* what) {
  napi_value argv[8];
  if (!args_of(env, info, n, argv)) return false;
  for (size_t i = 0; i < n; i++) {
    size_t l;
    a[i] = float_array(env, argv[i], &l);
    if (!a[i]) return false;
    if (i == 0) *len = l;
    else if (l != *len) {
      napi_throw_range_error(env, NULL, what);
      return false;
    }
  }
  return true;
}

static void swiglu_rows(const void* ctx, int64_t from, int64_t to) {
  float* const* a = ctx;  // gate, up, out
  const float *g = a[0], *u = a[1];
  float* o = a[2];
  for (int64_t i = from; i < to; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void swiglu_grad_rows(const void* ctx, int64_t from, int64_t to) {
  float* const* a = ctx;  // dy, gate, up, dgate, dup
  const float *dy = a[0], *g = a[1], *u = a[2];
  float *dg = a[3], *du = a[4];
  for (int64_t i = from; i < to; i++) {
    const float sig = 1.0f / (1.0f + expf(-g[i]));
    du[i] = dy[i] * g[i] * sig;
    dg[i] = dy[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
  }
}

// swiglu(gate, up, out): out = silu(gate) * up, silu(g) = g * sigmoid(g).
static napi_value swiglu(napi_env env, napi_callback_info info) {
  float* a[3];
  size_t n;
  if (!same_length_arrays(env, info, 3, a, &n, "kiln_blas.swiglu: arrays differ in length")) return NULL;
  parallel_rows((int64_t)n, 1, swiglu_rows, a);
  return NULL;
}

// swiglu_grad(dy, gate, up, dgate, dup): dgate = dy * up * sig * (1 + g * (1 - sig)), dup = dy * silu(g).
static napi_value swiglu_grad(napi_env env, napi_callback_info info) {
  float* a[5];
  size_t n;
  if (!same_length_arrays(env, info, 5, a, &n, "kiln_blas.swiglu_grad: arrays differ in length")) return NULL;
  parallel_rows((int64_t)n, 1, swiglu_grad_rows, a);
  return NULL;
}

// kl_rows(x, logp, rows, V, out): out[r] = sum_v p_v (logp_v - logq_v), q = softmax(x[r]) —
// the prompt-baking KL per reply position, in one pass over the vocabulary instead of six kernels.
// kl_rows_grad(dy, x, logp, rows, V, dx): dx[r] = dy[r] * (q - p).
struct kl_job {
  const float *dy, *x, *logp;
  float* out;
  int64_t V;
};

static void kl_rows_part(const void* ctx, int64_t from, int64_t to) {
  const struct kl_job* j = ctx;
  for (int64_t r = from; r < to; r++) {
    const float* xr = j->x + r * j->V;
    const float* pr = j->logp + r * j->V;
    const float lse = (float)row_logsumexp(xr, j->V);
    double kl = 0;
    for (int64_t v = 0; v < j->V; v++) kl += expf(pr[v]) * (pr[v] - (xr[v] - lse));
    j->out[r] = (float)kl;
  }
}

static void kl_rows_grad_part(const void* ctx, int64_t from, int64_t to) {
  const struct kl_job* j = ctx;
  for (int64_t r = from; r < to; r++) {
    const float* xr = j->x + r * j->V;
    const float* pr = j->logp + r * j->V;
    float* dr = j->out + r * j->V;
    const float g = j->dy[r];
    if (g == 0.0f) {  // masked positions (padding) get no gradient
      for (int64_t v = 0; v < j->V; v++) dr[v] = 0.0f;
      continue;
    }
    const float lse = (float)row_logsumexp(xr, j->V);
    for (int64_t v = 0; v < j->V; v++) dr[v] = g * (expf(xr[v] - lse) - expf(pr[v]));
  }
}

static napi_value kl_rows(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args_of(env, info, 5, argv)) return NULL;
  int64_t rows, V;
  size_t lx, lp, lo;
  if (!i64_of(env, argv[2], &rows) || !i64_of(env, argv[3], &V)) return NULL;
  const float* x = float_array(env, argv[0], &lx);
  if (!x) return NULL;
  const float* logp = float_array(env, argv[1], &lp);
  if (!logp) return NULL;
  float* out = float_array(env, argv[4], &lo);
  if (!out) return NULL;
  if (V < 1 || rows < 0 || (size_t)rows * (size_t)V != lx || lp != lx || (size_t)rows != lo) {
    napi_throw_range_error(env, NULL, "kiln_blas.kl_rows: shapes do not fit the arrays");
    return NULL;
  }
  const struct kl_job job = {NULL, x, logp, out, V};
  parallel_rows(rows, 2 * V, kl_rows_part, &job);
  return NULL;
}

static napi_value kl_rows_grad(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!args_of(env, info, 6, argv)) return NULL;
  int64_t rows, V;
  size_t ld, lx, lp, ldx;
  if (!i64_of(env, argv[3], &rows) || !i64_of(env, argv[4], &V)) return NULL;
  const float* dy = float_array(env, argv[0], &ld);
  if (!dy) return NULL;
  const float* x = float_array(env, argv[1], &lx);
  if (!x) return NULL;
  const float* logp = float_array(env, argv[2], &lp);
  if (!logp) return NULL;
  float* dx = float_array(env, argv[5], &ldx);
  if (!dx) return NULL;
  if (V < 1 || rows < 0 || (size_t)rows * (size_t)V != lx || lp != lx || ldx != lx || (size_t)rows != ld) {
    napi_throw_range_error(env, NULL, "kiln_blas.kl_rows_grad: shapes do not fit the arrays");
    return NULL;
  }
  const struct kl_job job = {dy, x, logp, dx, V};
  parallel_rows(rows, 2 * V, kl_rows_grad_part, &job);
  return NULL;
}

// --- fused decoder pieces: a LoRA linear, rotary embeddings and the attention softmax. Each
// replaced a chain of small tfjs kernels (and as many temporary arrays) on every layer.

// The Float32Array argument `v`, which must hold exactly `length` floats; NULL when it threw.
static float* sized_array(napi_env env, napi_value v, size_t length, const char* what) {
  size_t l;
  float* a = float_array(env, v, &l);
  if (a && l != length) {
    napi_throw_range_error(env, NULL, what);
    return NULL;
  }
  return a;
}

// Reads `n` non-negative integers from argv; false when it threw.
static bool sizes_of(napi_env env, napi_value* argv, size_t n, int64_t* out) {
  for (size_t i = 0; i < n; i++) {
    if (!i64_of(env, argv[i], &out[i])) return false;
    if (out[i] < 0) {
      napi_throw_range_error(env, NULL, "kiln_blas: negative size");
      return false;
    }
  }
  return true;
}

// The arguments of lora_linear and lora_linear_grad; the gradient's start with dy and end with
// three outputs instead of one.
struct lora_args {
  const float *dy, *x, *w, *a, *b;
  float *y, *dx, *da, *db;  // y for the forward; dx, da, db for the gradient
  int64_t n, in, out, r;
  float scale;
};

// Reads and checks lora_linear's (grad false) or lora_linear_grad's arguments; false when it threw.
static bool lora_args_of(napi_env env, napi_callback_info info, bool grad, struct lora_args* l) {
  napi_value argv[13];
  int64_t d[4];
  double scale;
  const int o = grad ? 1 : 0;
  if (!args_of(env, info, grad ? 13 : 10, argv) || !sizes_of(env, argv + o + 4, 4, d) || napi_get_value_double(env, argv[o + 8], &scale) != napi_ok)
    return false;
  *l = (struct lora_args){.n = d[0], .in = d[1], .out = d[2], .r = d[3], .scale = (float)scale};
  const int64_t n = l->n, in = l->in, out = l->out, r = l->r;
  const char* what = grad ? "kiln_blas.lora_linear_grad: shapes do not fit the arrays" : "kiln_blas.lora_linear: shapes do not fit the arrays";
  if ((grad && !(l->dy = sized_array(env, argv[0], n * out, what))) || !(l->x = sized_array(env, argv[o], n * in, what)) ||
      !(l->w = sized_array(env, argv[o + 1], in * out, what)) || !(l->a = sized_array(env, argv[o + 2], r * in, what)) ||
      !(l->b = sized_array(env, argv[o + 3], out * r, what)))
    return false;
  if (!grad) return (l->y = sized_array(env, argv[9], n * out, what)) != NULL;
  return (l->dx = sized_array(env, argv[10], n * in, what)) && (l->da = sized_array(env, argv[11], r * in, what)) &&
         (l->db = sized_array(env, argv[12], out * r, what));
}

// lora_linear(x, w, a, b, n, in, out, r, scale, y): y = x w + scale (x a^T) b^T
//   x [n, in], w [in, out] (kiln's layout), a [r, in], b [out, r], y [n, out].
static napi_value lora_linear(napi_env env, napi_callback_info info) {
  struct lora_args l;
  if (!lora_args_of(env, info, false, &l)) return NULL;
  float* u = malloc(sizeof(float) * (size_t)(l.n * l.r + 1));
  if (!u) {
    napi_throw_error(env, NULL, "kiln_blas.lora_linear: out of memory");
    return NULL;
  }
  gemm(false, false, l.n, l.out, l.in, 1.0f, l.x, l.w, 0.0f, l.y);
  gemm(false, true, l.n, l.r, l.in, 1.0f, l.x, l.a, 0.0f, u);      // [n, r]
  gemm(false, true, l.n, l.out, l.r, l.scale, u, l.b, 1.0f, l.y);  // y += scale u b^T
  free(u);
  return NULL;
}

// lora_linear_grad(dy, x, w, a, b, n, in, out, r, scale, dx, da, db), with g = dy b [n, r] and
// u = x a^T [n, r]:  dx = dy w^T + scale g a,  da = scale g^T x,  db = scale dy^T u.
// (Empty dimensions need no special case: gemm gives beta C for an empty inner product.)
static napi_value lora_linear_grad(napi_env env, napi_callback_info info) {
  struct lora_args l;
  if (!lora_args_of(env, info, true, &l)) return NULL;
  const int64_t n = l.n, in = l.in, out = l.out, r = l.r;
  float* g = malloc(sizeof(float) * (size_t)(2 * n * r + 1));
  if (!g) {
    napi_throw_error(env, NULL, "kiln_blas.lora_linear_grad: out of memory");
    return NULL;
  }
  float* u = g + n * r;
  const float s = l.scale;
  gemm(false, false, n, r, out, 1.0f, l.dy, l.b, 0.0f, g);     // g = dy b        [n, r]
  gemm(false, true, n, r, in, 1.0f, l.x, l.a, 0.0f, u);        // u = x a^T       [n, r]
  gemm(false, true, n, in, out, 1.0f, l.dy, l.w, 0.0f, l.dx);  // dx = dy w^T     [n, in]
  gemm(false, false, n, in, r, s, g, l.a, 1.0f, l.dx);         // dx += s g a
  gemm(true, false, r, in, n, s, g, l.x, 0.0f, l.da);          // da = s g^T x    [r, in]
  gemm(true, false, out, r, n, s, l.dy, u, 0.0f, l.db);        // db = s dy^T u   [out, r]
  free(g);
  return NULL;
}

struct rope_job {
  const float *x, *cos, *sin;
  float* y;
  float sign;
  int64_t heads, hd;
};

static void rope_rows(const void* ctx, int64_t from, int64_t to) {
  const struct rope_job* j = ctx;
  // locals, not j->..., in the loops: the compiler cannot prove the output never aliases the job
  const int64_t hd = j->hd, half = hd / 2, heads = j->heads;
  const float sign = j->sign;
  for (int64_t t = from; t < to; t++) {
    const float* restrict ct = j->cos + t * hd;
    const float* restrict st = j->sin + t * hd;
    for (int64_t h = 0; h < heads; h++) {
      const float* restrict xr = j->x + (t * heads + h) * hd;
      float* restrict yr = j->y + (t * heads + h) * hd;
      for (int64_t i = 0; i < half; i++) yr[i] = xr[i] * ct[i] - sign * xr[i + half] * st[i];
      for (int64_t i = 0; i < half; i++) yr[i + half] = xr[i + half] * ct[i + half] + sign * xr[i] * st[i + half];
    }
  }
}

// rope(x, cos, sin, rows, heads, hd, sign, y): rotary embedding in the rotate_half layout,
//   y = x cos + sign * rotate_half(x) sin, rotate_half(x) = [-x2, x1];
//   x, y [rows, heads, hd]; cos, sin [rows, hd], shared by a row's heads. sign -1 gives the
//   transpose (the gradient), since sin[i] = sin[i + hd/2].
static napi_value rope(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  int64_t d[3];
  double sign;
  if (!args_of(env, info, 8, argv) || !sizes_of(env, argv + 3, 3, d) || napi_get_value_double(env, argv[6], &sign) != napi_ok) return NULL;
  const int64_t rows = d[0], heads = d[1], hd = d[2];
  const char* what = "kiln_blas.rope: shapes do not fit the arrays";
  if (hd % 2) {
    napi_throw_range_error(env, NULL, "kiln_blas.rope: head size must be even");
    return NULL;
  }
  const float* x = sized_array(env, argv[0], rows * heads * hd, what);
  const float* c = x ? sized_array(env, argv[1], rows * hd, what) : NULL;
  const float* sn = c ? sized_array(env, argv[2], rows * hd, what) : NULL;
  float* y = sn ? sized_array(env, argv[7], rows * heads * hd, what) : NULL;
  if (!y) return NULL;
  const struct rope_job job = {x, c, sn, y, (float)sign, heads, hd};
  parallel_rows(rows, heads * hd, rope_rows, &job);
  return NULL;
}


// y = softmax(x * scale + mask) over one row of C; y may be x.
static void attention_softmax_row(const float* xr, const float* mr, float scale, float* yr, int64_t C) {
  float mx = -INFINITY;
  for (int64_t c = 0; c < C; c++) {
    const float v = xr[c] * scale + mr[c];
    mx = v > mx ? v : mx;
  }
  const float inv = (float)(1.0 / sum_exp(xr, scale, mr, mx, yr, C));
  for (int64_t c = 0; c < C; c++) yr[c] *= inv;
}

// o = scale * p * (g - sum(g * p)) over one row of C, the softmax's backward; o may be g.
static void attention_softmax_grad_row(const float* g, const float* p, float scale, float* o, int64_t C) {
  double dot = 0;
  for (int64_t c = 0; c < C; c++) dot += (double)g[c] * p[c];
  for (int64_t c = 0; c < C; c++) o[c] = scale * p[c] * (g[c] - (float)dot);
}

// --- attention in one kernel: the products read q, k and v where they lie (strided), so the
// decoder needs no transposes into and out of head-major layout, and each thread takes whole
// KV-head groups (their query heads share K and V, and their dK, dV sums stay on one thread).

// C = alpha op(A) op(B) + beta C, row-major with explicit leading dimensions.
static void gemm_ld(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_rows(M, N, beta, C, ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb,
              beta, C, (int)ldc);
}

struct fused_attention {
  const float *q, *k, *v, *mask, *dout, *probs_in;
  float *out, *probs, *dq, *dk, *dv;
  float scale;
  int64_t B, T, S, nH, nKv, hd;
  int64_t cap;                // K/V slots an array holds per batch entry and head (>= S: a KV cache's room to grow)
  int64_t kv_b, kv_g, kv_ld;  // K/V: batch stride, head stride and row stride (token-major or head-major)
  int64_t blocks;             // query rows in blocks of ATTENTION_ROWS (a prompt's; a decode step: 1)
  const int64_t* seen;        // forward, [B, blocks]: the keys a block's rows see (see key_extents)
};

// Query rows taken together when a prompt's rows see different numbers of keys (causal): the rows
// of a block multiply only the keys some row of the block sees.
#define ATTENTION_ROWS 32
// A mask value at or below this takes a key out (kiln masks with -1e9): its exp is 0 whenever
// the row sees some key, so leaving it out of both products changes nothing.
#define MASK_SKIP -1e6f

// A decode step's attention for one KV-head group: its G query heads' rows Q [G, hd] (one token
// each) against S keys and values K, V [S, hd], rows ld floats apart; P [G, S] gets the scores,
// then (after the softmax) O [G, hd] the weighted sum. OpenBLAS's sgemm packs K and V (a copy
// of each) before its product reads them, which held a long chat's attention to about a third
// of the machine's memory bandwidth (4 GB/s: 34 ms of an 80 ms step at 3,000 tokens on the
// 135M shape); here each key and value row is read once, for the whole group.
#define DECODE_SCORES_BODY                                                             \
  for (int64_t s = 0; s < S; s++) {                                                    \
    const float* k = K + s * ld;                                                       \
    for (int64_t i = 0; i < G; i++) {                                                  \
      const float* q = Q + i * hd;                                                     \
      few_v8 acc = {0};                                                                \
      float sum = 0.0f;                                                                \
      int64_t d = 0;                                                                   \
      for (; d + 8 <= hd; d += 8) acc += *(const few_v8*)(q + d) * *(const few_v8*)(k + d); \
      for (; d < hd; d++) sum += q[d] * k[d];                                          \
      P[i * S + s] = sum + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \
    }                                                                                  \
  }
#define DECODE_MIX_BODY                                                                \
  for (int64_t x = 0; x < G * hd; x++) O[x] = 0.0f;                                    \
  for (int64_t s = 0; s < S; s++) {                                                    \
    const float* v = V + s * ld;                                                       \
    for (int64_t i = 0; i < G; i++) {                                                  \
      const float p = P[i * S + s];                                                    \
      float* o = O + i * hd;                                                           \
      int64_t d = 0;                                                                   \
      for (; d + 8 <= hd; d += 8) *(few_v8*)(o + d) += p * *(const few_v8*)(v + d);   \
      for (; d < hd; d++) o[d] += p * v[d];                                            \
    }                                                                                  \
  }
#define DECODE_ATTENTION_FNS(SUFFIX, ATTR)                                                                          \
  ATTR static void decode_scores_##SUFFIX(const float* Q, const float* K, int64_t G, int64_t S, int64_t hd, int64_t ld, float* P) { \
    DECODE_SCORES_BODY                                                                                             \
  }                                                                                                                \
  ATTR static void decode_mix_##SUFFIX(const float* P, const float* V, int64_t G, int64_t S, int64_t hd, int64_t ld, float* O) {    \
    DECODE_MIX_BODY                                                                                                \
  }
#if defined(__x86_64__)
DECODE_ATTENTION_FNS(fast, FEW_FAST)
#else
#define decode_scores_fast decode_scores_plain
#define decode_mix_fast decode_mix_plain
#endif
DECODE_ATTENTION_FNS(plain, )

// Query head h of batch entry b: its rows [T, hd] start at q + (b*T*nH + h)*hd, one row every nH*hd.
#define Q_AT(j, base, b, h) ((base) + ((b) * (j)->T * (j)->nH + (h)) * (j)->hd)
#define KV_AT(j, base, b, g) ((base) + (b) * (j)->kv_b + (g) * (j)->kv_g)

// seen[b * blocks + blk]: 1 + the last key any row of block blk of batch entry b sees, or S when
// some row sees none (its softmax then spreads over every key, as the unskipped one does).
static int64_t* key_extents(const struct fused_attention* j) {
  int64_t* seen = malloc(sizeof(int64_t) * (size_t)(j->B * j->blocks));
  if (!seen) return NULL;
  for (int64_t b = 0; b < j->B; b++)
    for (int64_t blk = 0; blk < j->blocks; blk++) {
      int64_t E = 0;
      for (int64_t t = blk * ATTENTION_ROWS; t < j->T && t < (blk + 1) * ATTENTION_ROWS; t++) {
        const float* m = j->mask + (b * j->T + t) * j->S;
        int64_t last = j->S - 1;
        while (last >= 0 && m[last] <= MASK_SKIP) last--;
        E = last < 0 ? j->S : (last + 1 > E ? last + 1 : E);
      }
      seen[b * j->blocks + blk] = E;
    }
  return seen;
}

// A decode step's items: KV-head groups (b, g), the group's query heads sharing each K/V row read.
static void attention_groups(const void* ctx, int64_t from, int64_t to) {
  const struct fused_attention* j = ctx;
  const int64_t S = j->S, hd = j->hd, groups = j->nH / j->nKv;
  const bool fast = cpu_fast();
  for (int64_t item = from; item < to; item++) {
    const int64_t b = item / j->nKv, g = item % j->nKv, h = g * groups;
    // the group's query heads are adjacent rows [groups, hd], as are their outputs and their
    // probabilities [groups, S]: one pass over K and V for the whole group
    float* P = j->probs + (b * j->nH + h) * S;
    (fast ? decode_scores_fast : decode_scores_plain)(Q_AT(j, j->q, b, h), KV_AT(j, j->k, b, g), groups, S, hd, j->kv_ld, P);
    for (int64_t i = 0; i < groups; i++) attention_softmax_row(P + i * S, j->mask + b * S, j->scale, P + i * S, S);
    (fast ? decode_mix_fast : decode_mix_plain)(P, KV_AT(j, j->v, b, g), groups, S, hd, j->kv_ld, Q_AT(j, j->out, b, h));
  }
}

// A prompt's items: (b, h, row block), each block's products over the keys its rows see only (a
// causal prompt's scores: 62% of them in blocks of 32 at 128 tokens), the rest of its
// probabilities 0. Blocks of every head, so two threads share a batch entry of 3 KV heads evenly.
static void attention_blocks(const void* ctx, int64_t from, int64_t to) {
  const struct fused_attention* j = ctx;
  const int64_t T = j->T, S = j->S, hd = j->hd, groups = j->nH / j->nKv, ldq = j->nH * hd;
  for (int64_t item = from; item < to; item++) {
    const int64_t blk = item % j->blocks, h = (item / j->blocks) % j->nH, b = item / (j->blocks * j->nH);
    const int64_t t0 = blk * ATTENTION_ROWS, rows = T - t0 < ATTENTION_ROWS ? T - t0 : ATTENTION_ROWS, E = j->seen[b * j->blocks + blk];
    const float *K = KV_AT(j, j->k, b, h / groups), *V = KV_AT(j, j->v, b, h / groups);
    float* P = j->probs + ((b * j->nH + h) * T + t0) * S;  // [rows, S]
    gemm_ld(false, true, rows, E, hd, 1.0f, Q_AT(j, j->q, b, h) + t0 * ldq, ldq, K, j->kv_ld, 0.0f, P, S);
    for (int64_t t = 0; t < rows; t++) {
      attention_softmax_row(P + t * S, j->mask + (b * T + t0 + t) * S, j->scale, P + t * S, E);
      for (int64_t s = E; s < S; s++) P[t * S + s] = 0.0f;
    }
    gemm_ld(false, false, rows, hd, E, 1.0f, P, S, V, j->kv_ld, 0.0f, Q_AT(j, j->out, b, h) + t0 * ldq, ldq);
  }
}

// Items: KV-head groups (b, g), whose query heads' dK, dV sums stay on one thread. Keys no row of
// a block gave any weight (a probability of exactly 0: masked, or underflowed) add nothing to any
// gradient, so each block's products stop at the last key one of its rows weighed.
static void attention_groups_grad(const void* ctx, int64_t from, int64_t to) {
  const struct fused_attention* j = ctx;
  const int64_t T = j->T, S = j->S, hd = j->hd, groups = j->nH / j->nKv, ldq = j->nH * hd;
  float* dS = malloc(sizeof(float) * (size_t)(ATTENTION_ROWS * S + 1));  // [rows, E]
  if (!dS) {
    // a worker thread cannot throw into JavaScript: say why before stopping
    fprintf(stderr, "kiln_blas.attention_grad: out of memory for %lld floats\n", (long long)(ATTENTION_ROWS * S));
    abort();
  }
  for (int64_t item = from; item < to; item++) {
    const int64_t b = item / j->nKv, g = item % j->nKv;
    const float *K = KV_AT(j, j->k, b, g), *V = KV_AT(j, j->v, b, g);
    float *dK = KV_AT(j, j->dk, b, g), *dV = KV_AT(j, j->dv, b, g);
    for (int64_t s = 0; s < S; s++)
      for (int64_t d = 0; d < hd; d++) dK[s * j->kv_ld + d] = dV[s * j->kv_ld + d] = 0.0f;  // the group's heads sum into them
    for (int64_t h = g * groups; h < (g + 1) * groups; h++)
      for (int64_t t0 = 0; t0 < T; t0 += ATTENTION_ROWS) {
        const int64_t rows = T - t0 < ATTENTION_ROWS ? T - t0 : ATTENTION_ROWS;
        const float* P = j->probs_in + ((b * j->nH + h) * T + t0) * S;  // [rows, S]
        const float *dO = Q_AT(j, j->dout, b, h) + t0 * ldq, *Q = Q_AT(j, j->q, b, h) + t0 * ldq;
        int64_t E = 0;
        for (int64_t t = 0; t < rows; t++) {
          int64_t last = S - 1;
          while (last >= E && P[t * S + last] == 0.0f) last--;
          if (last + 1 > E) E = last + 1;
        }
        gemm_ld(false, true, rows, E, hd, 1.0f, dO, ldq, V, j->kv_ld, 0.0f, dS, E);            // dP = dO V^T
        gemm_ld(true, false, E, hd, rows, 1.0f, P, S, dO, ldq, 1.0f, dV, j->kv_ld);            // dV += P^T dO
        for (int64_t t = 0; t < rows; t++) attention_softmax_grad_row(dS + t * E, P + t * S, j->scale, dS + t * E, E);
        gemm_ld(false, false, rows, hd, E, 1.0f, dS, E, K, j->kv_ld, 0.0f, Q_AT(j, j->dq, b, h) + t0 * ldq, ldq);  // dQ = dS K
        gemm_ld(true, false, E, hd, rows, 1.0f, dS, E, Q, ldq, 1.0f, dK, j->kv_ld);            // dK += dS^T Q
      }
  }
  free(dS);
}

// Multiply-adds below which a decode step's attention runs on the calling thread (see run_attention).
#define DECODE_THREADED_ATTENTION (1 << 23)

// Runs fn over its items, a share per thread, each product single-threaded (these products are
// too small for OpenBLAS's own split to pay), when there is enough work.
static void run_attention(const struct fused_attention* j, rows_fn fn, int64_t items) {
  const int threads = openblas_get_num_threads();
  // A decode step (one query a row) of a few batched rows is well under a millisecond of work,
  // and a thread started for each of 30 layers waits for a core on a busy machine: 4 rows at 300
  // keys (135M shape) took 36 ms a step threaded against 1.4 ms for one row on one thread.
  const int64_t least = j->T == 1 ? DECODE_THREADED_ATTENTION : MIN_THREADED_BATCH;
  if (items >= 2 && threads > 1 && j->B * j->T * j->S * j->hd * j->nH >= least) {
    parallel_products(threads, items, fn, j);
  } else {
    fn(j, 0, items);  // (a decode step's products are kiln's own, not OpenBLAS's: it wakes no threads)
  }
}

// Reads the dims [B, T, S, nH, nKv, hd, kvHeadMajor, cap] and sizes the job's strides.
static bool attention_dims(napi_env env, napi_value v, double scale, struct fused_attention* j) {
  int64_t d[8];
  napi_value dims[8];
  for (uint32_t i = 0; i < 8; i++)
    if (napi_get_element(env, v, i, &dims[i]) != napi_ok) return false;
  if (!sizes_of(env, dims, 8, d)) return false;
  *j = (struct fused_attention){.scale = (float)scale, .B = d[0], .T = d[1], .S = d[2], .nH = d[3], .nKv = d[4], .hd = d[5], .cap = d[7]};
  j->blocks = (j->T + ATTENTION_ROWS - 1) / ATTENTION_ROWS;
  if (j->nKv < 1 || j->nH < 1 || j->nH % j->nKv != 0) {
    napi_throw_range_error(env, NULL, "kiln_blas.attention: query heads must be a positive multiple of KV heads");
    return false;
  }
  if (j->cap < j->S || (!d[6] && j->cap != j->S)) {
    napi_throw_range_error(env, NULL, "kiln_blas.attention: K/V must hold at least S slots (more only head-major)");
    return false;
  }
  j->kv_b = j->cap * j->nKv * j->hd;
  j->kv_g = d[6] ? j->cap * j->hd : j->hd;
  j->kv_ld = d[6] ? j->hd : j->nKv * j->hd;
  return true;
}

// attention(q, k, v, mask, scale, [B, T, S, nH, nKv, hd, kvHeadMajor, cap], out, probs):
//   out = softmax(q k^T * scale + mask) v per query head, its KV head h / (nH / nKv).
//   q, out [B, T, nH, hd]; k, v [B, S, nKv, hd] (or [B, nKv, cap, hd] when kvHeadMajor, of
//   which the first S slots are read);
//   mask [B, T, S] additive; probs [B, nH, T, S] receives the attention weights.
static napi_value attention(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  double scale;
  struct fused_attention j;
  if (!args_of(env, info, 8, argv) || napi_get_value_double(env, argv[4], &scale) != napi_ok || !attention_dims(env, argv[5], scale, &j)) return NULL;
  const char* what = "kiln_blas.attention: shapes do not fit the arrays";
  const int64_t nq = j.B * j.T * j.nH * j.hd, nkv = j.B * j.cap * j.nKv * j.hd;
  if (!(j.q = sized_array(env, argv[0], nq, what)) || !(j.k = sized_array(env, argv[1], nkv, what)) || !(j.v = sized_array(env, argv[2], nkv, what)) ||
      !(j.mask = sized_array(env, argv[3], j.B * j.T * j.S, what)) || !(j.out = sized_array(env, argv[6], nq, what)) ||
      !(j.probs = sized_array(env, argv[7], j.B * j.nH * j.T * j.S, what)))
    return NULL;
  if (j.T == 1) {
    run_attention(&j, attention_groups, j.B * j.nKv);
    return NULL;
  }
  int64_t* seen = key_extents(&j);
  if (!seen) {
    napi_throw_error(env, NULL, "kiln_blas.attention: out of memory");
    return NULL;
  }
  j.seen = seen;
  run_attention(&j, attention_blocks, j.B * j.nH * j.blocks);
  free(seen);
  return NULL;
}

// attention_grad(dout, q, k, v, probs, scale, dims, dq, dk, dv): the gradients of attention's
// out with respect to q, k and v (the mask is a constant), in their inputs' layouts.
static napi_value attention_grad(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  double scale;
  struct fused_attention j;
  if (!args_of(env, info, 10, argv) || napi_get_value_double(env, argv[5], &scale) != napi_ok || !attention_dims(env, argv[6], scale, &j)) return NULL;
  const char* what = "kiln_blas.attention_grad: shapes do not fit the arrays";
  const int64_t nq = j.B * j.T * j.nH * j.hd, nkv = j.B * j.cap * j.nKv * j.hd;
  if (!(j.dout = sized_array(env, argv[0], nq, what)) || !(j.q = sized_array(env, argv[1], nq, what)) || !(j.k = sized_array(env, argv[2], nkv, what)) ||
      !(j.v = sized_array(env, argv[3], nkv, what)) || !(j.probs_in = sized_array(env, argv[4], j.B * j.nH * j.T * j.S, what)) ||
      !(j.dq = sized_array(env, argv[7], nq, what)) || !(j.dk = sized_array(env, argv[8], nkv, what)) || !(j.dv = sized_array(env, argv[9], nkv, what)))
    return NULL;
  run_attention(&j, attention_groups_grad, j.B * j.nKv);
  return NULL;
}

// --- top-K: the teacher's targets when a bake keeps only its K most likely tokens, and the KL
// against them. tfjs's TopK builds an object per element (6M for 128 positions of a 49k vocab).

// The Int32Array argument `v`, which must hold exactly `length` ints; NULL when it threw.
static int32_t* sized_int32_array(napi_env env, napi_value v, size_t length, const char* what) {
  size_t l;
  int32_t* a = typed_data(env, v, napi_int32_array, &l, "kiln_blas: expected an Int32Array");
  if (a && l != length) {
    napi_throw_range_error(env, NULL, what);
    return NULL;
  }
  return a;
}

struct topk_job {
  const float* x;
  int64_t V, k;
  float* values;
  int32_t* indices;
};

// a ranks below b: a smaller value, or on a tie the larger index (tfjs keeps the lower index first)
static inline bool ranks_below(float av, int32_t ai, float bv, int32_t bi) { return av < bv || (av == bv && ai > bi); }

// Sifts heap slot i down in a heap whose root is the lowest-ranked entry.
static void sift_down(float* hv, int32_t* hi, int64_t n, int64_t i) {
  for (;;) {
    int64_t low = i;
    const int64_t l = 2 * i + 1, r = l + 1;
    if (l < n && ranks_below(hv[l], hi[l], hv[low], hi[low])) low = l;
    if (r < n && ranks_below(hv[r], hi[r], hv[low], hi[low])) low = r;
    if (low == i) return;
    const float tv = hv[i];
    const int32_t ti = hi[i];
    hv[i] = hv[low], hi[i] = hi[low], hv[low] = tv, hi[low] = ti;
    i = low;
  }
}

// Each row's k highest values, highest first, through a heap of the k best seen so far.
static void topk_rows(const void* ctx, int64_t from, int64_t to) {
  const struct topk_job* j = ctx;
  const int64_t V = j->V, k = j->k;
  for (int64_t r = from; r < to; r++) {
    const float* xr = j->x + r * V;
    float* hv = j->values + r * k;  // the heap lives in the output row, then is sorted in place
    int32_t* hi = j->indices + r * k;
    for (int64_t i = 0; i < k; i++) hv[i] = xr[i], hi[i] = (int32_t)i;
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(hv, hi, k, i);
    for (int64_t v = k; v < V; v++) {
      if (!ranks_below(hv[0], hi[0], xr[v], (int32_t)v)) continue;
      hv[0] = xr[v], hi[0] = (int32_t)v;
      sift_down(hv, hi, k, 0);
    }
    // heap sort: moving the lowest-ranked to the end leaves the row highest first
    for (int64_t n = k - 1; n > 0; n--) {
      const float tv = hv[0];
      const int32_t ti = hi[0];
      hv[0] = hv[n], hi[0] = hi[n], hv[n] = tv, hi[n] = ti;
      sift_down(hv, hi, n, 0);
    }
  }
}

// topk(x, rows, V, k, values, indices): per row of x [rows, V], its k highest values (highest
// first; ties: lower index first) and their indices; 1 <= k <= V.
static napi_value topk(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int64_t d[3];
  if (!args_of(env, info, 6, argv) || !sizes_of(env, argv + 1, 3, d)) return NULL;
  const int64_t rows = d[0], V = d[1], k = d[2];
  if (k < 1 || k > V) {
    napi_throw_range_error(env, NULL, "kiln_blas.topk: k must be in [1, V]");
    return NULL;
  }
  const char* what = "kiln_blas.topk: shapes do not fit the arrays";
  const float* x = sized_array(env, argv[0], rows * V, what);
  float* values = x ? sized_array(env, argv[4], rows * k, what) : NULL;
  int32_t* indices = values ? sized_int32_array(env, argv[5], rows * k, what) : NULL;
  if (!indices) return NULL;
  const struct topk_job job = {x, V, k, values, indices};
  parallel_rows(rows, V, topk_rows, &job);
  return NULL;
}

// The least student tail mass whose log is taken: KL_TAIL_FLOOR in src/tensor/fused.ts, which
// the composed path and the teacher's targets use.
#define KL_TINY 1e-12

struct kl_topk_job {
  const float *dy, *x, *logp, *tail;
  const int32_t* flat;  // [rows * K] ids into the flattened [rows, V] logits
  float* out;
  int64_t rows, V, K;
};

// The student's mass on row r's top K (its logits xr, their log-sum-exp lse).
static double topk_student_mass(const struct kl_topk_job* j, int64_t r, const float* xr, float lse) {
  double Q = 0;
  for (int64_t k = 0; k < j->K; k++) Q += exp((double)xr[j->flat[r * j->K + k] - r * j->V] - lse);
  return Q;
}

static void kl_topk_rows_part(const void* ctx, int64_t from, int64_t to) {
  const struct kl_topk_job* j = ctx;
  for (int64_t r = from; r < to; r++) {
    const float* xr = j->x + r * j->V;
    const float lse = (float)row_logsumexp(xr, j->V);
    double kl = 0;
    const double Q = topk_student_mass(j, r, xr, lse);
    for (int64_t k = 0; k < j->K; k++) {
      const double lp = j->logp[r * j->K + k];
      kl += exp(lp) * (lp - ((double)xr[j->flat[r * j->K + k] - r * j->V] - lse));
    }
    const double lt = j->tail[r];
    j->out[r] = (float)(kl + exp(lt) * (lt - log(fmax(1.0 - Q, KL_TINY))));
  }
}

// d/dz_v = P q_v - p_v [v in top] + c (q_v [v in top] - q_v Q), c = p_tail / (1 - Q) (0 where
// the tail's log was clamped), times dy.
static void kl_topk_rows_grad_part(const void* ctx, int64_t from, int64_t to) {
  const struct kl_topk_job* j = ctx;
  for (int64_t r = from; r < to; r++) {
    const float* xr = j->x + r * j->V;
    float* dr = j->out + r * j->V;
    const float g = j->dy[r];
    if (g == 0.0f) {  // masked positions (padding) get no gradient
      for (int64_t v = 0; v < j->V; v++) dr[v] = 0.0f;
      continue;
    }
    const float lse = (float)row_logsumexp(xr, j->V);
    double P = 0;  // the teacher's mass on its top K
    for (int64_t k = 0; k < j->K; k++) P += exp((double)j->logp[r * j->K + k]);
    const double Q = topk_student_mass(j, r, xr, lse);
    const double c = 1.0 - Q >= KL_TINY ? exp((double)j->tail[r]) / (1.0 - Q) : 0.0;
    const float all = (float)(P - c * Q) * g;
    for (int64_t v = 0; v < j->V; v++) dr[v] = all * expf(xr[v] - lse);
    for (int64_t k = 0; k < j->K; k++) {
      const int64_t v = j->flat[r * j->K + k] - r * j->V;
      dr[v] += g * (float)(c * exp((double)xr[v] - lse) - exp((double)j->logp[r * j->K + k]));
    }
  }
}

// Reads kl_topk's arrays (and dy and its output when `grad`); false when it threw.
static bool kl_topk_job_of(napi_env env, napi_value* argv, bool grad, struct kl_topk_job* j) {
  int64_t d[3];
  const int o = grad ? 1 : 0;
  if (!sizes_of(env, argv + o + 4, 3, d)) return false;
  const int64_t rows = d[0], V = d[1], K = d[2];
  if (V < 1 || K < 1 || K > V) {
    napi_throw_range_error(env, NULL, "kiln_blas.kl_topk: need 1 <= K <= V");
    return false;
  }
  const char* what = "kiln_blas.kl_topk: shapes do not fit the arrays";
  *j = (struct kl_topk_job){.rows = rows, .V = V, .K = K};
  if ((grad && !(j->dy = sized_array(env, argv[0], rows, what))) || !(j->x = sized_array(env, argv[o], rows * V, what)) ||
      !(j->logp = sized_array(env, argv[o + 1], rows * K, what)) || !(j->flat = sized_int32_array(env, argv[o + 2], rows * K, what)) ||
      !(j->tail = sized_array(env, argv[o + 3], rows, what)) || !(j->out = sized_array(env, argv[o + 7], grad ? rows * V : rows, what)))
    return false;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < K; k++) {
      const int64_t v = j->flat[r * K + k] - r * V;
      if (v < 0 || v >= V) {
        napi_throw_range_error(env, NULL, "kiln_blas.kl_topk: a top-K index is outside its row");
        return false;
      }
    }
  return true;
}

// kl_topk(logits, topLogp, flat, tail, rows, V, K, out): per row, KL(teacher || student) over
// the teacher's top K and its tail mass, sum_k p_k (log p_k - log q_k) + p_t (log p_t -
// log max(1 - sum_k q_k, 1e-12)), q = softmax(logits row); flat [rows*K] index the flattened
// logits [rows, V]; topLogp [rows, K], tail [rows] (log p_t); out [rows].
//
// kl_topk_grad(dy, logits, topLogp, flat, tail, rows, V, K, dx): the gradient of kl_topk's rows
// (weighted by dy [rows]) with respect to the logits; dx [rows, V]. The top-K ids of a row are
// distinct (as topk gives them).
static napi_value kl_topk_or_grad(napi_env env, napi_callback_info info, bool grad) {
  napi_value argv[9];
  struct kl_topk_job j;
  if (!args_of(env, info, grad ? 9 : 8, argv) || !kl_topk_job_of(env, argv, grad, &j)) return NULL;
  parallel_rows(j.rows, 2 * j.V, grad ? kl_topk_rows_grad_part : kl_topk_rows_part, &j);
  return NULL;
}

static napi_value kl_topk(napi_env env, napi_callback_info info) { return kl_topk_or_grad(env, info, false); }

static napi_value kl_topk_grad(napi_env env, napi_callback_info info) { return kl_topk_or_grad(env, info, true); }

static napi_value set_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t n;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &n));
  openblas_set_num_threads(n);
  return NULL;
}

static napi_value get_threads(napi_env env, napi_callback_info info) {
  napi_value out;
  CHECK(napi_create_int32(env, openblas_get_num_threads(), &out));
  return out;
}

static napi_value config(napi_env env, napi_callback_info info) {
  napi_value out;
  CHECK(napi_create_string_utf8(env, openblas_get_config(), NAPI_AUTO_LENGTH, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"sgemm", NULL, sgemm, NULL, NULL, NULL, napi_default, NULL},
      {"setThreads", NULL, set_threads, NULL, NULL, NULL, napi_default, NULL},
      {"getThreads", NULL, get_threads, NULL, NULL, NULL, napi_default, NULL},
      {"config", NULL, config, NULL, NULL, NULL, napi_default, NULL},
      {"binary", NULL, binary, NULL, NULL, NULL, napi_default, NULL},
      {"softmax", NULL, softmax, NULL, NULL, NULL, napi_default, NULL},
      {"logSoftmax", NULL, log_softmax, NULL, NULL, NULL, napi_default, NULL},
      {"transpose", NULL, transpose, NULL, NULL, NULL, napi_default, NULL},
      {"unary", NULL, unary, NULL, NULL, NULL, napi_default, NULL},
      {"reduce", NULL, reduce, NULL, NULL, NULL, napi_default, NULL},
      {"rmsnorm", NULL, rmsnorm, NULL, NULL, NULL, napi_default, NULL},
      {"rmsnormGrad", NULL, rmsnorm_grad, NULL, NULL, NULL, napi_default, NULL},
      {"swiglu", NULL, swiglu, NULL, NULL, NULL, napi_default, NULL},
      {"swigluGrad", NULL, swiglu_grad, NULL, NULL, NULL, napi_default, NULL},
      {"klRows", NULL, kl_rows, NULL, NULL, NULL, napi_default, NULL},
      {"klRowsGrad", NULL, kl_rows_grad, NULL, NULL, NULL, napi_default, NULL},
      {"loraLinear", NULL, lora_linear, NULL, NULL, NULL, napi_default, NULL},
      {"loraLinearGrad", NULL, lora_linear_grad, NULL, NULL, NULL, napi_default, NULL},
      {"rope", NULL, rope, NULL, NULL, NULL, napi_default, NULL},
      {"attention", NULL, attention, NULL, NULL, NULL, napi_default, NULL},
      {"attentionGrad", NULL, attention_grad, NULL, NULL, NULL, napi_default, NULL},
      {"topk", NULL, topk, NULL, NULL, NULL, napi_default, NULL},
      {"klTopk", NULL, kl_topk, NULL, NULL, NULL, napi_default, NULL},
      {"klTopkGrad", NULL, kl_topk_grad, NULL, NULL, NULL, napi_default, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
