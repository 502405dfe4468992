/*
 * run: a bundle's model without Python. Loads the bundle's model library with the TVM runtime
 * beside it (runtime/libtvm_runtime.so, libtvm_ffi.so; found through the rpath $ORIGIN/runtime),
 * reads a float32 .npy input, runs the Relax VM, writes the output .npy and prints the median
 * latency. Only TVM FFI's C ABI (tvm/ffi/c_api.h) is used, as the Python loader does.
 *
 *   BUNDLE/run [--input x.npy] [--output y.npy] [--repeat N]
 *
 * Without --input the input is zeros of the bundle's shape (read from its metadata.json).
 * Errors: one line on stderr, exit code 2. TVM_NUM_THREADS, when unset, becomes the number of
 * online CPUs before the runtime's thread pool exists (TVM alone would take half on x86).
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tvm/ffi/c_api.h>

#define MAX_DIMS 8

static void fail(const char *fmt, ...) {
  va_list args;
  fputs("error: ", stderr);
  va_start(args, fmt);
  vfprintf(stderr, fmt, args);
  va_end(args);
  fputc('\n', stderr);
  exit(2);
}

/* The message of the error TVM raised, to its first line. */
static void fail_tvm(const char *what) {
  TVMFFIObjectHandle error = NULL;
  TVMFFIErrorMoveFromRaised(&error);
  if (error == NULL) fail("%s failed", what);
  const TVMFFIErrorCell *cell =
      (const TVMFFIErrorCell *)((const char *)error + sizeof(TVMFFIObject));
  int length = (int)cell->message.size;
  const char *newline = memchr(cell->message.data, '\n', cell->message.size);
  if (newline) length = (int)(newline - cell->message.data);
  fail("%s: %.*s: %.*s", what, (int)cell->kind.size, cell->kind.data, length,
       cell->message.data);
}

static TVMFFIObjectHandle global(const char *name) {
  TVMFFIByteArray bytes = {name, strlen(name)};
  TVMFFIObjectHandle f = NULL;
  if (TVMFFIFunctionGetGlobal(&bytes, &f) != 0) fail_tvm(name);
  if (f == NULL) fail("the TVM runtime has no function %s", name);
  return f;
}

static TVMFFIAny call(TVMFFIObjectHandle f, TVMFFIAny *args, int n, const char *what) {
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  if (TVMFFIFunctionCall(f, args, n, &result) != 0) fail_tvm(what);
  return result;
}

static TVMFFIAny any_int(int64_t v) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFIInt;
  a.v_int64 = v;
  return a;
}

static TVMFFIAny any_str(const char *s) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}

static TVMFFIAny any_ptr(void *p) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFIOpaquePtr;
  a.v_ptr = p;
  return a;
}

/* A module's function by name. */
static TVMFFIObjectHandle method(TVMFFIAny module, const char *name) {
  TVMFFIAny args[3] = {module, any_str(name), any_int(1)};
  TVMFFIAny f = call(global("ffi.ModuleGetFunction"), args, 3, name);
  if (f.type_index != kTVMFFIFunction) fail("the model library has no function %s", name);
  return f.v_obj;
}

typedef struct {
  int ndim;
  int64_t shape[MAX_DIMS];
  float *data;
  size_t count;
} Array;

/* The shape of a numpy header's "'shape': (1, 3, 224, 224)" or a JSON "[1, 3, 224, 224]". */
static int parse_dims(const char *text, char close, int64_t *shape) {
  int ndim = 0;
  for (const char *p = text; *p && *p != close;) {
    if (*p >= '0' && *p <= '9') {
      if (ndim == MAX_DIMS) return -1;
      shape[ndim++] = strtoll(p, (char **)&p, 10);
    } else {
      p++;
    }
  }
  return ndim;
}

static Array read_npy(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) fail("cannot read input '%s'", path);
  unsigned char magic[10];
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0)
    fail("input '%s' is not a .npy array; save it with numpy.save", path);
  size_t header_len;
  if (magic[6] == 1) {
    unsigned char b[2];
    if (fread(b, 1, 2, f) != 2) fail("input '%s' is truncated", path);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) fail("input '%s' is truncated", path);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | ((size_t)b[3] << 24);
  }
  char *header = calloc(header_len + 1, 1);
  if (fread(header, 1, header_len, f) != header_len) fail("input '%s' is truncated", path);
  if (!strstr(header, "'descr': '<f4'"))
    fail("input '%s' is not float32 (this runner reads float32 .npy; convert it with "
         "x.astype('float32'))", path);
  if (strstr(header, "'fortran_order': True"))
    fail("input '%s' is Fortran-ordered; save np.ascontiguousarray(x)", path);
  const char *shape = strstr(header, "'shape': (");
  if (!shape) fail("input '%s' has no shape in its header", path);
  Array a = {0};
  a.ndim = parse_dims(shape + 10, ')', a.shape);
  if (a.ndim < 0) fail("input '%s' has more than %d dimensions", path, MAX_DIMS);
  a.count = 1;
  for (int i = 0; i < a.ndim; i++) a.count *= (size_t)a.shape[i];
  a.data = malloc(a.count * sizeof(float) + 1);
  if (fread(a.data, sizeof(float), a.count, f) != a.count) fail("input '%s' is truncated", path);
  fclose(f);
  free(header);
  return a;
}

static void write_npy(const char *path, const Array *a) {
  char dims[256] = "";
  for (int i = 0; i < a->ndim; i++) {
    char one[32];
    snprintf(one, sizeof(one), "%lld%s", (long long)a->shape[i],
             a->ndim == 1 ? "," : (i + 1 < a->ndim ? ", " : ""));
    strcat(dims, one);
  }
  char header[512];
  int n = snprintf(header, sizeof(header),
                   "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
  int padded = ((10 + n + 1 + 63) / 64) * 64 - 10; /* header + '\n', 64-byte aligned */
  FILE *f = fopen(path, "wb");
  if (!f) fail("cannot write output '%s'", path);
  unsigned char lead[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, padded & 0xff, padded >> 8};
  fwrite(lead, 1, 10, f);
  fwrite(header, 1, n, f);
  for (int i = n; i < padded - 1; i++) fputc(' ', f);
  fputc('\n', f);
  fwrite(a->data, sizeof(float), a->count, f);
  if (fclose(f) != 0) fail("cannot write output '%s'", path);
}

/* The input shape recorded in the bundle's metadata.json ("input": {..., "shape": [...]}). */
static Array zeros_of_bundle(const char *dir) {
  char path[PATH_MAX];
  snprintf(path, sizeof(path), "%s/metadata.json", dir);
  FILE *f = fopen(path, "rb");
  if (!f) fail("'%s' has no metadata.json: it is not a tvmc-attend bundle", dir);
  static char text[1 << 16];
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  fclose(f);
  text[n] = 0;
  const char *input = strstr(text, "\"input\"");
  const char *shape = input ? strstr(input, "\"shape\"") : NULL;
  if (!shape || !strchr(shape, '[')) fail("%s has no input shape; recompile the bundle", path);
  Array a = {0};
  a.ndim = parse_dims(strchr(shape, '[') + 1, ']', a.shape);
  a.count = 1;
  for (int i = 0; i < a.ndim; i++) a.count *= (size_t)a.shape[i];
  a.data = calloc(a.count + 1, sizeof(float));
  return a;
}

/* The bundle's model library: the one .so at its top level. */
static void find_library(const char *dir, char *out, size_t size) {
  DIR *d = opendir(dir);
  if (!d) fail("cannot open bundle directory '%s'", dir);
  struct dirent *e;
  int found = 0;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len > 3 && strcmp(e->d_name + len - 3, ".so") == 0) {
      snprintf(out, size, "%s/%s", dir, e->d_name);
      found++;
    }
  }
  closedir(d);
  if (found != 1) fail("bundle '%s' should hold one model library (.so), not %d", dir, found);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static TVMFFIAny tensor_of(const Array *a) {
  TVMFFIAny dims[MAX_DIMS];
  for (int i = 0; i < a->ndim; i++) dims[i] = any_int(a->shape[i]);
  TVMFFIAny shape = call(global("ffi.Shape"), dims, a->ndim, "ffi.Shape");
  TVMFFIAny args[4];
  memset(args, 0, sizeof(args));
  args[0] = shape;
  args[1].type_index = kTVMFFIDataType;
  args[1].v_dtype = (DLDataType){kDLFloat, 32, 1};
  args[2].type_index = kTVMFFIDevice;
  args[2].v_device = (DLDevice){kDLCPU, 0};
  args[3].type_index = kTVMFFINone;
  TVMFFIAny tensor = call(global("runtime.TVMTensorAllocWithScope"), args, 4, "allocating");
  TVMFFIAny copy[3] = {tensor, any_ptr(a->data), any_int((int64_t)(a->count * sizeof(float)))};
  call(global("runtime.TVMTensorCopyFromBytes"), copy, 3, "copying the input");
  TVMFFIObjectDecRef(shape.v_obj);
  return tensor;
}

static Array array_of(TVMFFIAny tensor) {
  if (tensor.type_index != kTVMFFITensor) fail("the model returned something other than a tensor");
  const DLTensor *t = (const DLTensor *)((const char *)tensor.v_obj + sizeof(TVMFFIObject));
  if (t->dtype.code != kDLFloat || t->dtype.bits != 32) fail("the model's output is not float32");
  Array a = {0};
  a.ndim = t->ndim;
  a.count = 1;
  for (int i = 0; i < t->ndim; i++) {
    a.shape[i] = t->shape[i];
    a.count *= (size_t)t->shape[i];
  }
  a.data = malloc(a.count * sizeof(float) + 1);
  TVMFFIAny copy[3] = {tensor, any_ptr(a.data), any_int((int64_t)(a.count * sizeof(float)))};
  call(global("runtime.TVMTensorCopyToBytes"), copy, 3, "copying the output");
  return a;
}

int main(int argc, char **argv) {
  const char *input = NULL, *output = NULL;
  int repeat = 20;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) input = argv[++i];
    else if (strcmp(argv[i], "--output") == 0 && i + 1 < argc) output = argv[++i];
    else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = atoi(argv[++i]);
    else fail("usage: %s [--input x.npy] [--output y.npy] [--repeat N]", argv[0]);
  }
  if (repeat < 1) fail("--repeat must be at least 1");
  char dir[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
  if (len <= 0) fail("cannot find this program's bundle directory");
  dir[len] = 0;
  *strrchr(dir, '/') = 0;
  if (getenv("TVM_NUM_THREADS") == NULL) {
    char cpus[16];
    snprintf(cpus, sizeof(cpus), "%ld", sysconf(_SC_NPROCESSORS_ONLN));
    setenv("TVM_NUM_THREADS", cpus, 0);
  }
  Array x = input ? read_npy(input) : zeros_of_bundle(dir);
  char library[PATH_MAX];
  find_library(dir, library, sizeof(library));

  double start = now_ms();
  TVMFFIAny path = any_str(library);
  TVMFFIAny module = call(global("ffi.ModuleLoadFromFile"), &path, 1, "loading the model");
  TVMFFIAny vm = call(method(module, "vm_load_executable"), NULL, 0, "vm_load_executable");
  TVMFFIAny init[3] = {any_int(kDLCPU), any_int(0), any_int(2 /* pooled allocator */)};
  call(method(vm, "vm_initialization"), init, 3, "vm_initialization");
  double loaded = now_ms();

  TVMFFIAny x_tensor = tensor_of(&x);
  TVMFFIAny main_args[1] = {x_tensor};
  TVMFFIAny y_tensor = call(method(vm, "main"), main_args, 1, "running the model");
  Array y = array_of(y_tensor);
  double first = now_ms();

  TVMFFIAny staged[2] = {any_str("main"), x_tensor};
  call(method(vm, "set_input"), staged, 2, "set_input");
  TVMFFIObjectHandle invoke = method(vm, "invoke_stateful");
  TVMFFIAny name = any_str("main");
  double *times = malloc(sizeof(double) * (size_t)repeat);
  for (int i = 0; i < repeat; i++) {
    double t0 = now_ms();
    call(invoke, &name, 1, "running the model");
    times[i] = now_ms() - t0;
  }
  qsort(times, (size_t)repeat, sizeof(double), by_value);
  if (output) write_npy(output, &y);

  TVMFFIAny threads = call(global("runtime.NumThreads"), NULL, 0, "runtime.NumThreads");
  printf("loaded %s in %.1f ms, first inference %.1f ms\n", strrchr(library, '/') + 1,
         loaded - start, first - loaded);
  printf("output [");
  for (int i = 0; i < y.ndim; i++) printf(i ? ", %lld" : "%lld", (long long)y.shape[i]);
  printf("]\n");
  printf("latency: median %.2f ms (p10 %.2f, p90 %.2f, n=%d), %lld TVM threads\n",
         (times[(repeat - 1) / 2] + times[repeat / 2]) / 2, times[repeat / 10],
         times[(repeat * 9) / 10], repeat,
         (long long)threads.v_int64);
  if (output) printf("output saved to %s\n", output);
  return 0;
}
