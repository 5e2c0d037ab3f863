/* intformer C API: load a compiled intformer library and run it with the TVM runtime alone (no Python).
 *
 * Link with -lintformer (libintformer.so, which needs libtvm_runtime.so and libtvm_ffi.so beside it).
 *
 *   intformer_model *m;
 *   if (intformer_open("model.so", NULL, &m) != INTFORMER_OK) { fprintf(stderr, "%s\n", intformer_last_error()); }
 *   intformer_set_input(m, "input_ids", ids, sizeof ids);      // one sample, the compiled shape and dtype
 *   intformer_run(m);
 *   const void *out; size_t n;
 *   intformer_get_output(m, 0, &out, &n);                      // valid until the next run or close
 *   intformer_close(m);
 *
 * Every function that can fail returns an intformer_status; the message of the last failure on the calling
 * thread is intformer_last_error(). Tensors are dense, row-major, in the dtype and shape the manifest gives.
 *
 * Entry points: a library has one entry point by default (`main`, an encoder). Libraries with several (an
 * encoder-decoder's `encoder` and `decoder`) are served by opening each entry point by name
 * (intformer_open(path, "decoder", &m)); the decoding loop itself (greedy or beam search, the SentencePiece
 * tokenizer) is not part of this API yet: use `intformer translate` in Python for that. Not yet either:
 * language-model entry points (intformer compiles none yet).
 */
#ifndef INTFORMER_H_
#define INTFORMER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define INTFORMER_API_VERSION 1

#if defined(__GNUC__)
#define INTFORMER_API __attribute__((visibility("default")))
#else
#define INTFORMER_API
#endif

typedef enum {
  INTFORMER_OK = 0,
  INTFORMER_ERR_ARGUMENT = 1, /* a NULL pointer, an index or name that does not exist */
  INTFORMER_ERR_LOAD = 2,     /* the file is missing, not a loadable library, or not an intformer library */
  INTFORMER_ERR_INPUT = 3,    /* an input of the wrong size, not set, or with ids outside the model's table */
  INTFORMER_ERR_RUN = 4       /* the runtime failed while running the model */
} intformer_status;

typedef enum {
  INTFORMER_BOOL = 0,
  INTFORMER_INT8 = 1,
  INTFORMER_INT16 = 2,
  INTFORMER_INT32 = 3,
  INTFORMER_INT64 = 4,
  INTFORMER_UINT8 = 5,
  INTFORMER_UINT16 = 6,
  INTFORMER_UINT32 = 7,
  INTFORMER_UINT64 = 8,
  INTFORMER_FLOAT16 = 9,
  INTFORMER_FLOAT32 = 10,
  INTFORMER_FLOAT64 = 11
} intformer_dtype;

#define INTFORMER_MAX_NDIM 8

/* One input or output of the opened entry point. Strings and the shape live as long as the model. */
typedef struct {
  const char *name;
  intformer_dtype dtype;
  const char *dtype_name; /* NumPy's name: "int64", "float32", ... */
  size_t element_size;    /* bytes per element */
  int ndim;
  int64_t shape[INTFORMER_MAX_NDIM];
  size_t nbytes;          /* element_size times the product of the shape */
} intformer_tensor_info;

typedef struct intformer_model intformer_model;

/* The message of the last failed call on this thread ("" if none). */
INTFORMER_API const char *intformer_last_error(void);

/* Load the library at `path` and start its VM on this machine's CPU. `entry` names the entry point for a
 * library with several (NULL or "" for its default). On success *out is a model to free with intformer_close. */
INTFORMER_API intformer_status intformer_open(const char *path, const char *entry, intformer_model **out);
INTFORMER_API void intformer_close(intformer_model *model);

/* Threads of the TVM runtime's pool for every model in this process (0: one per core). */
INTFORMER_API intformer_status intformer_set_threads(int threads);

/* The embedded manifest as JSON (inputs, outputs, target, tool versions, ...). */
INTFORMER_API const char *intformer_manifest_json(const intformer_model *model);
/* The entry point that was opened. */
INTFORMER_API const char *intformer_entry(const intformer_model *model);

INTFORMER_API int intformer_num_inputs(const intformer_model *model);
INTFORMER_API int intformer_num_outputs(const intformer_model *model);
INTFORMER_API intformer_status intformer_input_info(const intformer_model *model, int index, intformer_tensor_info *info);
INTFORMER_API intformer_status intformer_output_info(const intformer_model *model, int index, intformer_tensor_info *info);
/* Index of the input called `name`, or -1. */
INTFORMER_API int intformer_input_index(const intformer_model *model, const char *name);

/* Copy one input (`nbytes` must equal its info's nbytes). Inputs keep their values across runs. */
INTFORMER_API intformer_status intformer_set_input(intformer_model *model, const char *name, const void *data, size_t nbytes);
/* Run once on the inputs set (all must have been set). Checks ids against the model's embedding tables first. */
INTFORMER_API intformer_status intformer_run(intformer_model *model);
/* Output `index` of the last run: a pointer valid until the next intformer_run or intformer_close. */
INTFORMER_API intformer_status intformer_get_output(const intformer_model *model, int index, const void **data, size_t *nbytes);

#ifdef __cplusplus
}
#endif

#endif /* INTFORMER_H_ */
