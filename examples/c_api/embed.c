/* Embedding an intformer model in a C program: open the library, list its inputs and outputs, fill one sample,
 * run, print the outputs. Build against a runner bundle (`intformer package LIB.so -o BUNDLE`):
 *
 *     make BUNDLE=path/to/bundle            # or: make BUNDLE=... CC=aarch64-linux-gnu-gcc for a Raspberry Pi
 *     ./embed path/to/bundle/model.so [THREADS]
 *
 * Every integer input is filled with 1 (a valid token id, a full attention mask); float inputs with 0.5. The
 * program prints, per output, its shape, the first values (%.9g: exact for float32) and their sum.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "intformer.h"

static void fill(void *data, const intformer_tensor_info *info) {
  size_t n = info->nbytes / info->element_size, i;
  for (i = 0; i < n; ++i) {
    switch (info->dtype) {
      case INTFORMER_FLOAT32: ((float *)data)[i] = 0.5f; break;
      case INTFORMER_FLOAT64: ((double *)data)[i] = 0.5; break;
      case INTFORMER_INT64: ((int64_t *)data)[i] = 1; break;
      case INTFORMER_INT32: ((int32_t *)data)[i] = 1; break;
      case INTFORMER_INT16: ((int16_t *)data)[i] = 1; break;
      default: ((uint8_t *)data)[i] = 1; break; /* int8, uint8, bool */
    }
  }
}

static double value(const void *data, intformer_dtype dtype, size_t i) {
  switch (dtype) {
    case INTFORMER_FLOAT32: return ((const float *)data)[i];
    case INTFORMER_FLOAT64: return ((const double *)data)[i];
    case INTFORMER_INT64: return (double)((const int64_t *)data)[i];
    case INTFORMER_INT32: return ((const int32_t *)data)[i];
    case INTFORMER_INT16: return ((const int16_t *)data)[i];
    case INTFORMER_INT8: return ((const int8_t *)data)[i];
    default: return ((const uint8_t *)data)[i];
  }
}

int main(int argc, char **argv) {
  intformer_model *model = NULL;
  intformer_tensor_info info;
  int i, d;
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.so [THREADS]\n", argv[0]);
    return 2;
  }
  if (argc > 2 && intformer_set_threads(atoi(argv[2])) != INTFORMER_OK) {
    fprintf(stderr, "error: %s\n", intformer_last_error());
    return 1;
  }
  if (intformer_open(argv[1], NULL, &model) != INTFORMER_OK) {
    fprintf(stderr, "error: %s\n", intformer_last_error());
    return 1;
  }
  printf("%s: entry point %s\n", argv[1], intformer_entry(model));
  for (i = 0; i < intformer_num_inputs(model); ++i) {
    void *data;
    intformer_input_info(model, i, &info);
    printf("input %s %s [", info.name, info.dtype_name);
    for (d = 0; d < info.ndim; ++d) printf("%s%lld", d ? ", " : "", (long long)info.shape[d]);
    printf("]\n");
    data = malloc(info.nbytes);
    fill(data, &info);
    if (intformer_set_input(model, info.name, data, info.nbytes) != INTFORMER_OK) {
      fprintf(stderr, "error: %s\n", intformer_last_error());
      free(data);
      intformer_close(model);
      return 1;
    }
    free(data);
  }
  if (intformer_run(model) != INTFORMER_OK) {
    fprintf(stderr, "error: %s\n", intformer_last_error());
    intformer_close(model);
    return 1;
  }
  for (i = 0; i < intformer_num_outputs(model); ++i) {
    const void *data;
    size_t nbytes, k, n;
    double sum = 0;
    intformer_output_info(model, i, &info);
    intformer_get_output(model, i, &data, &nbytes);
    n = nbytes / info.element_size;
    printf("output %s %s [", info.name, info.dtype_name);
    for (d = 0; d < info.ndim; ++d) printf("%s%lld", d ? ", " : "", (long long)info.shape[d]);
    printf("] first:");
    for (k = 0; k < n && k < 4; ++k) printf(" %.9g", value(data, info.dtype, k));
    for (k = 0; k < n; ++k) sum += value(data, info.dtype, k);
    printf(" sum: %.9g\n", sum);
  }
  intformer_close(model);
  return 0;
}
