// The C API of intformer.h over the TVM FFI: load the library module, start its Relax VM on the CPU (as
// tvm.runtime.vm.VirtualMachine does: vm_load_executable, then vm_initialization), read the embedded manifest
// (VM function intformer_manifest), and call the entry point with dense CPU tensors.
#include "intformer.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

thread_local std::string g_error;

intformer_status Fail(intformer_status code, const std::string& msg) {
  g_error = msg;
  return code;
}

// The first line of a TVM error: its kind and message, without the traceback.
std::string Describe(const std::exception& e) {
  std::string s;
  if (auto* err = dynamic_cast<const ffi::Error*>(&e)) {
    s = std::string(err->kind()) + ": " + std::string(err->message());
  } else {
    s = e.what();
  }
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

struct DType {
  const char* name;
  intformer_dtype code;
  DLDataType dl;
  size_t size;
};

const DType kDTypes[] = {
    {"bool", INTFORMER_BOOL, {kDLBool, 8, 1}, 1},        {"int8", INTFORMER_INT8, {kDLInt, 8, 1}, 1},
    {"int16", INTFORMER_INT16, {kDLInt, 16, 1}, 2},      {"int32", INTFORMER_INT32, {kDLInt, 32, 1}, 4},
    {"int64", INTFORMER_INT64, {kDLInt, 64, 1}, 8},      {"uint8", INTFORMER_UINT8, {kDLUInt, 8, 1}, 1},
    {"uint16", INTFORMER_UINT16, {kDLUInt, 16, 1}, 2},   {"uint32", INTFORMER_UINT32, {kDLUInt, 32, 1}, 4},
    {"uint64", INTFORMER_UINT64, {kDLUInt, 64, 1}, 8},   {"float16", INTFORMER_FLOAT16, {kDLFloat, 16, 1}, 2},
    {"float32", INTFORMER_FLOAT32, {kDLFloat, 32, 1}, 4}, {"float64", INTFORMER_FLOAT64, {kDLFloat, 64, 1}, 8},
};

const DType* FindDType(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

struct Spec {
  std::string name;
  const DType* dtype;
  std::vector<int64_t> shape;
  size_t nbytes;
  bool bounded = false;
  int64_t lo = 0, hi = 0;  // valid ids of an input that indexes an embedding table
};

// 64-byte aligned CPU storage for the input tensors (what TVM's own CPU allocator gives).
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = nullptr;
    if (posix_memalign(&t->data, 64, n ? n : 1) != 0) throw std::bad_alloc();
    std::memset(t->data, 0, n);
  }
  void FreeData(DLTensor* t) { free(t->data); }
};

}  // namespace

struct intformer_model {
  std::optional<ffi::Module> lib;  // the library (kernels, constants) and the VM started on it
  std::optional<ffi::Module> vm;
  ffi::Function fn{nullptr};
  std::string manifest, entry;
  std::vector<Spec> inputs, outputs;
  std::vector<ffi::Tensor> in_tensors;
  std::vector<bool> in_set;
  std::vector<ffi::Tensor> out_tensors;  // the last run's outputs
};

namespace {

// m[key], or nullopt when the key is absent or null
std::optional<ffi::Any> Get(const ffi::Map<ffi::Any, ffi::Any>& m, const char* key) {
  auto it = m.find(ffi::String(key));
  if (it == m.end() || (*it).second == nullptr) return std::nullopt;
  return (*it).second;
}

ffi::Any Req(const ffi::Map<ffi::Any, ffi::Any>& m, const char* key) {
  auto v = Get(m, key);
  if (!v) throw std::runtime_error(std::string("the manifest lacks \"") + key + "\"");
  return *v;
}

std::vector<Spec> ParseSpecs(const std::optional<ffi::Any>& list, const char* what) {
  std::vector<Spec> out;
  if (!list) throw std::runtime_error(std::string("the manifest has no ") + what);
  for (const ffi::Any& item : list->cast<ffi::Array<ffi::Any>>()) {
    auto m = item.cast<ffi::Map<ffi::Any, ffi::Any>>();
    Spec s;
    s.name = std::string(Req(m, "name").cast<ffi::String>());
    std::string dt = std::string(Req(m, "dtype").cast<ffi::String>());
    s.dtype = FindDType(dt);
    if (s.dtype == nullptr) throw std::runtime_error("unsupported dtype " + dt + " of '" + s.name + "'");
    size_t n = s.dtype->size;
    for (const ffi::Any& d : Req(m, "shape").cast<ffi::Array<ffi::Any>>()) {
      s.shape.push_back(d.cast<int64_t>());
      n *= static_cast<size_t>(s.shape.back());
    }
    if (s.shape.size() > INTFORMER_MAX_NDIM) throw std::runtime_error("'" + s.name + "' has too many dimensions");
    s.nbytes = n;
    out.push_back(std::move(s));
  }
  return out;
}

void ParseBounds(const std::optional<ffi::Any>& bounds, std::vector<Spec>* inputs) {
  if (!bounds) return;
  auto m = bounds->cast<ffi::Map<ffi::Any, ffi::Any>>();
  for (Spec& s : *inputs) {
    auto b = Get(m, s.name.c_str());
    if (!b) continue;
    auto pair = b->cast<ffi::Array<ffi::Any>>();
    s.bounded = true;
    s.lo = pair[0].cast<int64_t>();
    s.hi = pair[1].cast<int64_t>();
  }
}

// inputs/outputs/input_bounds of the entry point `entry` ("" = the default one).
void ReadManifest(intformer_model* m, const std::string& entry) {
  ffi::String err;
  ffi::Any root = ffi::json::Parse(ffi::String(m->manifest), &err);
  if (!err.empty()) throw std::runtime_error("the embedded manifest is not JSON: " + std::string(err));
  auto top = root.cast<ffi::Map<ffi::Any, ffi::Any>>();
  auto fmt = Get(top, "format");
  if (!fmt || std::string(fmt->cast<ffi::String>()) != "intformer-artifact")
    throw std::runtime_error("the embedded manifest is not an intformer manifest");
  std::string dflt = Get(top, "entry") ? std::string(Req(top, "entry").cast<ffi::String>()) : "main";
  if (entry.empty() || entry == dflt) {
    m->entry = dflt;
    m->inputs = ParseSpecs(Get(top, "inputs"), "inputs");
    m->outputs = ParseSpecs(Get(top, "outputs"), "outputs");
    ParseBounds(Get(top, "input_bounds"), &m->inputs);
    return;
  }
  std::string names;
  if (auto entries = Get(top, "entries")) {
    for (const ffi::Any& e : entries->cast<ffi::Array<ffi::Any>>()) {
      auto em = e.cast<ffi::Map<ffi::Any, ffi::Any>>();
      std::string name = std::string(Req(em, "name").cast<ffi::String>());
      if (name == entry) {
        m->entry = name;
        m->inputs = ParseSpecs(Get(em, "inputs"), "inputs");
        m->outputs = ParseSpecs(Get(em, "outputs"), "outputs");
        ParseBounds(Get(em, "input_bounds"), &m->inputs);
        return;
      }
      names += (names.empty() ? "" : ", ") + name;
    }
  }
  throw std::invalid_argument("the library has no entry point '" + entry + "' (it has " +
                              (names.empty() ? dflt : names) + ")");
}

intformer_status Info(const std::vector<Spec>& specs, int index, intformer_tensor_info* info) {
  if (info == nullptr) return Fail(INTFORMER_ERR_ARGUMENT, "info is NULL");
  if (index < 0 || index >= static_cast<int>(specs.size()))
    return Fail(INTFORMER_ERR_ARGUMENT, "index " + std::to_string(index) + " out of range (the model has " +
                                            std::to_string(specs.size()) + ")");
  const Spec& s = specs[index];
  info->name = s.name.c_str();
  info->dtype = s.dtype->code;
  info->dtype_name = s.dtype->name;
  info->element_size = s.dtype->size;
  info->ndim = static_cast<int>(s.shape.size());
  for (size_t i = 0; i < s.shape.size(); ++i) info->shape[i] = s.shape[i];
  info->nbytes = s.nbytes;
  return INTFORMER_OK;
}

template <typename T>
bool InRange(const void* data, size_t n, int64_t lo, int64_t hi, int64_t* bad) {
  const T* p = static_cast<const T*>(data);
  for (size_t i = 0; i < n; ++i) {
    int64_t v = static_cast<int64_t>(p[i]);
    if (v < lo || v > hi) {
      *bad = v;
      return false;
    }
  }
  return true;
}

bool CheckBounds(const Spec& s, const void* data, int64_t* bad) {
  size_t n = s.nbytes / s.dtype->size;
  switch (s.dtype->code) {
    case INTFORMER_INT8: return InRange<int8_t>(data, n, s.lo, s.hi, bad);
    case INTFORMER_INT16: return InRange<int16_t>(data, n, s.lo, s.hi, bad);
    case INTFORMER_INT32: return InRange<int32_t>(data, n, s.lo, s.hi, bad);
    case INTFORMER_INT64: return InRange<int64_t>(data, n, s.lo, s.hi, bad);
    case INTFORMER_UINT8: return InRange<uint8_t>(data, n, s.lo, s.hi, bad);
    case INTFORMER_UINT16: return InRange<uint16_t>(data, n, s.lo, s.hi, bad);
    case INTFORMER_UINT32: return InRange<uint32_t>(data, n, s.lo, s.hi, bad);
    default: return true;
  }
}

}  // namespace

extern "C" {

const char* intformer_last_error(void) { return g_error.c_str(); }

intformer_status intformer_set_threads(int threads) {
  if (threads < 0) return Fail(INTFORMER_ERR_ARGUMENT, "threads must be 0 or more");
  try {
    // read when a thread pool starts (each calling thread has its own), and applied to this thread's pool now
    if (threads > 0) setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
    ffi::Function::GetGlobalRequired("runtime.config_threadpool")(0, threads);
    return INTFORMER_OK;
  } catch (const std::exception& e) {
    return Fail(INTFORMER_ERR_RUN, "cannot size the thread pool: " + Describe(e));
  }
}

intformer_status intformer_open(const char* path, const char* entry, intformer_model** out) {
  if (out == nullptr || path == nullptr) return Fail(INTFORMER_ERR_ARGUMENT, "path and out must not be NULL");
  *out = nullptr;
  struct stat st;
  if (stat(path, &st) != 0) return Fail(INTFORMER_ERR_LOAD, std::string(path) + ": no such file");
  if (!S_ISREG(st.st_mode)) return Fail(INTFORMER_ERR_LOAD, std::string(path) + ": not a file");
  std::unique_ptr<intformer_model> m(new intformer_model());
  try {
    m->lib = ffi::Module::LoadFromFile(ffi::String(path));
  } catch (const std::exception& e) {
    return Fail(INTFORMER_ERR_LOAD, std::string(path) + ": not a loadable compiled library (" + Describe(e) + ")");
  }
  try {
    auto load_exec = (*m->lib)->GetFunction("vm_load_executable", true);
    if (!load_exec.has_value()) throw std::runtime_error("no Relax VM executable inside");
    m->vm = (*load_exec)().cast<ffi::Module>();
    // the CPU (kDLCPU = 1, device 0) with the pooled allocator (2), as tvm.runtime.vm.VirtualMachine does
    (*(*m->vm)->GetFunction("vm_initialization", true))(static_cast<int>(kDLCPU), 0, 2);
    auto manifest = (*m->vm)->GetFunction("intformer_manifest", true);
    if (!manifest.has_value()) throw std::runtime_error("no embedded manifest");
    m->manifest = std::string((*manifest)().cast<ffi::String>());
  } catch (const std::exception& e) {
    return Fail(INTFORMER_ERR_LOAD, std::string(path) + ": not an intformer library (" + Describe(e) + ")");
  }
  try {
    ReadManifest(m.get(), entry ? entry : "");
  } catch (const std::invalid_argument& e) {
    return Fail(INTFORMER_ERR_ARGUMENT, std::string(path) + ": " + e.what());
  } catch (const std::exception& e) {
    return Fail(INTFORMER_ERR_LOAD, std::string(path) + ": " + Describe(e));
  }
  try {
    auto fn = (*m->vm)->GetFunction(ffi::String(m->entry), true);
    if (!fn.has_value()) throw std::runtime_error("no VM function '" + m->entry + "'");
    m->fn = *fn;
    for (const Spec& s : m->inputs) {
      m->in_tensors.push_back(ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(s.shape), s.dtype->dl,
                                                       DLDevice{kDLCPU, 0}));
      m->in_set.push_back(false);
    }
  } catch (const std::exception& e) {
    return Fail(INTFORMER_ERR_LOAD, std::string(path) + ": " + Describe(e));
  }
  *out = m.release();
  return INTFORMER_OK;
}

void intformer_close(intformer_model* model) { delete model; }

const char* intformer_manifest_json(const intformer_model* model) { return model ? model->manifest.c_str() : ""; }
const char* intformer_entry(const intformer_model* model) { return model ? model->entry.c_str() : ""; }

int intformer_num_inputs(const intformer_model* model) { return model ? static_cast<int>(model->inputs.size()) : 0; }
int intformer_num_outputs(const intformer_model* model) {
  return model ? static_cast<int>(model->outputs.size()) : 0;
}

intformer_status intformer_input_info(const intformer_model* model, int index, intformer_tensor_info* info) {
  if (model == nullptr) return Fail(INTFORMER_ERR_ARGUMENT, "model is NULL");
  return Info(model->inputs, index, info);
}

intformer_status intformer_output_info(const intformer_model* model, int index, intformer_tensor_info* info) {
  if (model == nullptr) return Fail(INTFORMER_ERR_ARGUMENT, "model is NULL");
  return Info(model->outputs, index, info);
}

int intformer_input_index(const intformer_model* model, const char* name) {
  if (model == nullptr || name == nullptr) return -1;
  for (size_t i = 0; i < model->inputs.size(); ++i)
    if (model->inputs[i].name == name) return static_cast<int>(i);
  return -1;
}

intformer_status intformer_set_input(intformer_model* model, const char* name, const void* data, size_t nbytes) {
  if (model == nullptr || name == nullptr || data == nullptr)
    return Fail(INTFORMER_ERR_ARGUMENT, "model, name and data must not be NULL");
  int i = intformer_input_index(model, name);
  if (i < 0) {
    std::string names;
    for (const Spec& s : model->inputs) names += (names.empty() ? "" : ", ") + s.name;
    return Fail(INTFORMER_ERR_ARGUMENT, std::string("no input '") + name + "'; the model takes " + names);
  }
  const Spec& s = model->inputs[i];
  if (nbytes != s.nbytes)
    return Fail(INTFORMER_ERR_INPUT, "input '" + s.name + "' takes " + std::to_string(s.nbytes) + " bytes (" +
                                         s.dtype->name + "), got " + std::to_string(nbytes));
  std::memcpy(model->in_tensors[i].data_ptr(), data, nbytes);
  model->in_set[i] = true;
  return INTFORMER_OK;
}

intformer_status intformer_run(intformer_model* model) {
  if (model == nullptr) return Fail(INTFORMER_ERR_ARGUMENT, "model is NULL");
  std::vector<ffi::AnyView> args;
  for (size_t i = 0; i < model->inputs.size(); ++i) {
    const Spec& s = model->inputs[i];
    if (!model->in_set[i]) return Fail(INTFORMER_ERR_INPUT, "input '" + s.name + "' was not set");
    int64_t bad = 0;
    if (s.bounded && !CheckBounds(s, model->in_tensors[i].data_ptr(), &bad))
      return Fail(INTFORMER_ERR_INPUT, "input '" + s.name + "' has a value out of range [" + std::to_string(s.lo) +
                                           ", " + std::to_string(s.hi) + "] (" + std::to_string(bad) +
                                           "): the model's table has " + std::to_string(s.hi + 1) + " rows");
    args.emplace_back(model->in_tensors[i]);
  }
  try {
    model->out_tensors.clear();
    ffi::Any ret;
    model->fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    if (auto t = ret.try_cast<ffi::Tensor>()) {
      model->out_tensors.push_back(*t);
    } else {
      for (const ffi::Any& item : ret.cast<ffi::Array<ffi::Any>>()) model->out_tensors.push_back(item.cast<ffi::Tensor>());
    }
  } catch (const std::exception& e) {
    model->out_tensors.clear();
    return Fail(INTFORMER_ERR_RUN, "running '" + model->entry + "' failed: " + Describe(e));
  }
  if (model->out_tensors.size() != model->outputs.size()) {
    size_t n = model->out_tensors.size();
    model->out_tensors.clear();
    return Fail(INTFORMER_ERR_RUN, "'" + model->entry + "' returned " + std::to_string(n) +
                                       " outputs, the manifest lists " + std::to_string(model->outputs.size()));
  }
  for (size_t i = 0; i < model->outputs.size(); ++i) {
    const ffi::Tensor& t = model->out_tensors[i];
    if (!t.IsContiguous() || ffi::GetDataSize(t) != model->outputs[i].nbytes) {
      model->out_tensors.clear();
      return Fail(INTFORMER_ERR_RUN, "output '" + model->outputs[i].name + "' does not match the manifest");
    }
  }
  return INTFORMER_OK;
}

intformer_status intformer_get_output(const intformer_model* model, int index, const void** data, size_t* nbytes) {
  if (model == nullptr || data == nullptr) return Fail(INTFORMER_ERR_ARGUMENT, "model and data must not be NULL");
  if (index < 0 || index >= static_cast<int>(model->outputs.size()))
    return Fail(INTFORMER_ERR_ARGUMENT, "output index " + std::to_string(index) + " out of range");
  if (model->out_tensors.empty()) return Fail(INTFORMER_ERR_ARGUMENT, "no outputs: call intformer_run first");
  const ffi::Tensor& t = model->out_tensors[index];
  *data = static_cast<const char*>(t.data_ptr()) + t.byte_offset();
  if (nbytes) *nbytes = model->outputs[index].nbytes;
  return INTFORMER_OK;
}

}  // extern "C"
