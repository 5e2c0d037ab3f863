// intformer-run: `intformer run` without Python. Reads an inputs .npz (one array per model input, named as in
// the model, with a leading sample axis), runs every sample through the library with the C API of intformer.h,
// writes the outputs .npz. --bench N times N runs of the first sample and prints the peak resident memory.
//
// Errors are one line on stderr: exit 2 for a bad command line, file or input; 1 for a failure of the runtime.
#include <unistd.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "intformer.h"
#include "npz.h"

namespace {

const char kUsage[] =
    "usage: intformer-run [MODEL.so] --inputs IN.npz -o OUT.npz [--threads N] [--bench N] [--entry NAME]\n"
    "       intformer-run [MODEL.so] --info\n"
    "Runs a compiled intformer library on every sample of IN.npz (one array per model input, named as in the\n"
    "model, leading sample axis) and writes the outputs to OUT.npz. MODEL defaults to the library beside this\n"
    "program. --bench N: median latency of N runs of the first sample (with zeros if no --inputs), and peak\n"
    "memory. --threads N: runtime threads (default: the TVM runtime's). --info: print the inputs and outputs.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct InputError : std::runtime_error {  // a bad file or input: exit 2
  using std::runtime_error::runtime_error;
};
struct RuntimeFailure : std::runtime_error {  // the runtime failed: exit 1
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model, inputs, output, entry;
  int threads = 0, bench = 0;
  bool info = false;
};

int ParseInt(const std::string& flag, const char* v, int lo) {
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || n < lo || n > 1000000)
    throw UsageError(flag + " takes an integer of at least " + std::to_string(lo) + ", not '" + v + "'");
  return static_cast<int>(n);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--inputs") {
      o.inputs = value();
    } else if (a == "-o" || a == "--output") {
      o.output = value();
    } else if (a == "--threads") {
      o.threads = ParseInt(a, value(), 1);
    } else if (a == "--bench") {
      o.bench = ParseInt(a, value(), 1);
    } else if (a == "--entry") {
      o.entry = value();
    } else if (a == "--info") {
      o.info = true;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("unknown option " + a);
    } else if (o.model.empty()) {
      o.model = a;
    } else {
      throw UsageError("unexpected argument " + a + " (one model at most)");
    }
  }
  if (!o.info && o.bench == 0 && (o.inputs.empty() || o.output.empty()))
    throw UsageError("give --inputs IN.npz and -o OUT.npz (or --bench N, or --info)");
  if (!o.inputs.empty() && o.output.empty() && o.bench == 0) throw UsageError("give -o OUT.npz");
  return o;
}

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

// The model library beside this program: the one .so that is not a runtime library.
std::string DefaultModel() {
  std::string dir = SelfDir();
  std::vector<std::string> found;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 3 && n.compare(n.size() - 3, 3, ".so") == 0 && n != "libtvm_runtime.so" &&
          n != "libtvm_ffi.so" && n != "libintformer.so")
        found.push_back(n);
    }
    closedir(d);
  }
  if (found.size() == 1) return dir + "/" + found[0];
  if (found.empty()) throw UsageError("no model library beside " + dir + "/intformer-run; give MODEL.so");
  std::sort(found.begin(), found.end());
  std::string names;
  for (const auto& f : found) names += (names.empty() ? "" : ", ") + f;
  throw UsageError("several model libraries in " + dir + " (" + names + "); give MODEL.so");
}

// A field of /proc/self/status in kB ("VmHWM:" the peak resident memory, "VmRSS:" the current), or -1.
long StatusKb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0) return std::atol(line.c_str() + n);
  return -1;
}

std::string ShapeStr(const std::vector<int64_t>& s, size_t from = 0) {
  std::string r;
  for (size_t i = from; i < s.size(); ++i) r += (i > from ? "x" : "") + std::to_string(s[i]);
  return r;
}

std::string Tuple(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// Element i of `a` as a double (floats) or as an exact integer (ints, bools).
template <typename T>
T Read(const npz::Array& a, size_t i) {
  const uint8_t* p = a.data.data() + i * a.itemsize;
  switch (a.kind) {
    case '?': return static_cast<T>(p[0] != 0);
    case 'b':
      switch (a.itemsize) {
        case 1: { int8_t v; std::memcpy(&v, p, 1); return static_cast<T>(v); }
        case 2: { int16_t v; std::memcpy(&v, p, 2); return static_cast<T>(v); }
        case 4: { int32_t v; std::memcpy(&v, p, 4); return static_cast<T>(v); }
        default: { int64_t v; std::memcpy(&v, p, 8); return static_cast<T>(v); }
      }
    case 'u':
      switch (a.itemsize) {
        case 1: return static_cast<T>(p[0]);
        case 2: { uint16_t v; std::memcpy(&v, p, 2); return static_cast<T>(v); }
        case 4: { uint32_t v; std::memcpy(&v, p, 4); return static_cast<T>(v); }
        default: { uint64_t v; std::memcpy(&v, p, 8); return static_cast<T>(v); }
      }
    default:
      switch (a.itemsize) {
        case 4: { float v; std::memcpy(&v, p, 4); return static_cast<T>(v); }
        case 8: { double v; std::memcpy(&v, p, 8); return static_cast<T>(v); }
        default: throw InputError("float16 inputs are not supported");
      }
  }
}

template <typename T>
void Write(uint8_t* dst, T v) {
  std::memcpy(dst, &v, sizeof v);
}

// `a` converted to the input's dtype (as compiler/npz.py does: integers that fit, ints or floats to floats).
std::vector<uint8_t> Cast(const std::string& path, const npz::Array& a, const intformer_tensor_info& in) {
  char want = 0;
  size_t wsize = 0;
  npz::ParseDTypeName(in.dtype_name, &want, &wsize);
  if (a.kind == want && a.itemsize == wsize) return a.data;
  size_t n = a.size();
  std::vector<uint8_t> out(n * wsize);
  auto mismatch = [&]() {
    return InputError(path + ": array '" + in.name + "' has dtype " + a.dtype_name() + ", expected " +
                      in.dtype_name);
  };
  if (want == 'b' || want == 'u' || want == '?') {
    if (a.kind == 'f') throw mismatch();
    if (want == '?') {
      for (size_t i = 0; i < n; ++i) out[i] = Read<uint64_t>(a, i) != 0;
      return out;
    }
    const bool src_unsigned = a.kind == 'u' || a.kind == '?';
    for (size_t i = 0; i < n; ++i) {
      bool fits;
      int64_t sv = 0;
      uint64_t uv = 0;
      if (src_unsigned) {
        uv = Read<uint64_t>(a, i);
        fits = want == 'u' ? (wsize == 8 || uv < (1ull << (8 * wsize)))
                           : uv <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max() >> (64 - 8 * wsize));
        sv = static_cast<int64_t>(uv);
      } else {
        sv = Read<int64_t>(a, i);
        if (want == 'u') {
          fits = sv >= 0 && (wsize == 8 || static_cast<uint64_t>(sv) < (1ull << (8 * wsize)));
        } else {
          int64_t hi = std::numeric_limits<int64_t>::max() >> (64 - 8 * wsize);
          fits = sv >= -hi - 1 && sv <= hi;
        }
        uv = static_cast<uint64_t>(sv);
      }
      if (!fits)
        throw InputError(path + ": array '" + in.name + "' has values beyond " + in.dtype_name + " (dtype " +
                         a.dtype_name() + ")");
      uint8_t* d = out.data() + i * wsize;
      switch (wsize) {
        case 1: Write<uint8_t>(d, static_cast<uint8_t>(uv)); break;
        case 2: Write<uint16_t>(d, static_cast<uint16_t>(uv)); break;
        case 4: Write<uint32_t>(d, static_cast<uint32_t>(uv)); break;
        default: Write<uint64_t>(d, uv); break;
      }
    }
    return out;
  }
  if (want == 'f' && (wsize == 4 || wsize == 8)) {
    for (size_t i = 0; i < n; ++i) {
      double v = Read<double>(a, i);
      if (wsize == 4) Write<float>(out.data() + i * 4, static_cast<float>(v));
      else Write<double>(out.data() + i * 8, v);
    }
    return out;
  }
  throw mismatch();
}

struct Samples {
  size_t count = 0;
  std::vector<std::vector<uint8_t>> data;  // per input: every sample, contiguous, in the input's dtype
};

// The arrays of the .npz checked against the model's inputs (names, shapes, dtypes, sample counts).
Samples LoadInputs(const std::string& path, intformer_model* m) {
  std::vector<npz::Array> arrays;
  try {
    arrays = npz::Load(path);
  } catch (const npz::NpzError& e) {
    throw InputError(e.what());
  }
  int n_in = intformer_num_inputs(m);
  std::vector<intformer_tensor_info> infos(n_in);
  std::vector<std::string> expected;
  for (int i = 0; i < n_in; ++i) {
    intformer_input_info(m, i, &infos[i]);
    expected.push_back(infos[i].name);
  }
  std::map<std::string, const npz::Array*> by_name;
  for (const auto& a : arrays) by_name[a.name] = &a;
  std::vector<std::string> missing, extra;
  for (const auto& n : expected)
    if (!by_name.count(n)) missing.push_back(n);
  for (const auto& a : arrays)
    if (std::find(expected.begin(), expected.end(), a.name) == expected.end()) extra.push_back(a.name);
  auto list = [](const std::vector<std::string>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", '" : "'") + v[i] + "'";
    return s + "]";
  };
  if (!missing.empty() || !extra.empty()) {
    std::vector<std::string> names;
    for (const auto& a : arrays) names.push_back(a.name);
    std::sort(names.begin(), names.end());
    std::string msg = path + ": arrays " + list(names) + " do not match the model's inputs " + list(expected);
    if (!missing.empty()) msg += "; missing " + list(missing);
    if (!extra.empty()) msg += "; unexpected " + list(extra);
    throw InputError(msg);
  }
  Samples s;
  std::vector<size_t> counts;
  for (int i = 0; i < n_in; ++i) {
    const npz::Array& a = *by_name[infos[i].name];
    std::vector<int64_t> want(infos[i].shape, infos[i].shape + infos[i].ndim);
    size_t count;
    if (a.shape == want) {
      count = 1;  // a single sample without the leading axis
    } else if (a.shape.size() == want.size() + 1 && std::equal(want.begin(), want.end(), a.shape.begin() + 1)) {
      count = static_cast<size_t>(a.shape[0]);
    } else {
      throw InputError(path + ": array '" + a.name + "' has shape " + Tuple(a.shape) + ", expected (samples, " +
                       Tuple(want).substr(1) + " for input shape " + ShapeStr(want));
    }
    counts.push_back(count);
    s.data.push_back(Cast(path, a, infos[i]));
  }
  for (size_t c : counts) {
    if (c != counts[0]) {
      std::string msg = path + ": arrays disagree on the number of samples:";
      for (int i = 0; i < n_in; ++i) msg += std::string(" ") + infos[i].name + "=" + std::to_string(counts[i]);
      throw InputError(msg);
    }
  }
  s.count = counts.empty() ? 0 : counts[0];
  if (s.count == 0) throw InputError(path + ": holds zero samples");
  return s;
}

void Check(intformer_status st, bool input_side = false) {
  if (st == INTFORMER_OK) return;
  std::string msg = intformer_last_error();
  if (st == INTFORMER_ERR_RUN && !input_side) throw RuntimeFailure(msg);
  throw InputError(msg);
}

void SetSample(intformer_model* m, const Samples& s, size_t k) {
  for (int i = 0; i < intformer_num_inputs(m); ++i) {
    intformer_tensor_info info;
    intformer_input_info(m, i, &info);
    Check(intformer_set_input(m, info.name, s.data[i].data() + k * info.nbytes, info.nbytes), true);
  }
}

void RunSample(intformer_model* m, size_t k, size_t count) {
  intformer_status st = intformer_run(m);
  if (st == INTFORMER_ERR_INPUT) {
    std::string where = count > 1 ? "sample " + std::to_string(k) + ": " : "";
    throw InputError(where + intformer_last_error());
  }
  Check(st);
}

void PrintInfo(intformer_model* m, const std::string& path) {
  std::printf("%s (entry point %s)\n", path.c_str(), intformer_entry(m));
  for (int out = 0; out < 2; ++out) {
    int n = out ? intformer_num_outputs(m) : intformer_num_inputs(m);
    for (int i = 0; i < n; ++i) {
      intformer_tensor_info info;
      if (out) intformer_output_info(m, i, &info);
      else intformer_input_info(m, i, &info);
      std::printf("  %-6s %-24s %-8s %s\n", out ? "output" : "input", info.name, info.dtype_name,
                  ShapeStr(std::vector<int64_t>(info.shape, info.shape + info.ndim)).c_str());
    }
  }
}

int Main(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  if (o.model.empty()) o.model = DefaultModel();
  if (o.threads > 0) Check(intformer_set_threads(o.threads));
  auto t0 = std::chrono::steady_clock::now();
  intformer_model* m = nullptr;
  intformer_status st = intformer_open(o.model.c_str(), o.entry.empty() ? nullptr : o.entry.c_str(), &m);
  if (st != INTFORMER_OK) throw InputError(intformer_last_error());
  std::unique_ptr<intformer_model, void (*)(intformer_model*)> guard(m, intformer_close);
  double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (o.info) {
    PrintInfo(m, o.model);
    return 0;
  }
  Samples samples;
  if (!o.inputs.empty()) {
    samples = LoadInputs(o.inputs, m);
  } else {  // --bench without inputs: one sample of zeros (valid ids for every table)
    samples.count = 1;
    for (int i = 0; i < intformer_num_inputs(m); ++i) {
      intformer_tensor_info info;
      intformer_input_info(m, i, &info);
      samples.data.emplace_back(info.nbytes, 0);
    }
  }
  if (!o.output.empty()) {
    int n_out = intformer_num_outputs(m);
    std::vector<npz::Array> outs(n_out);
    for (int j = 0; j < n_out; ++j) {
      intformer_tensor_info info;
      intformer_output_info(m, j, &info);
      outs[j].name = info.name;
      npz::ParseDTypeName(info.dtype_name, &outs[j].kind, &outs[j].itemsize);
      outs[j].shape.assign(1, static_cast<int64_t>(samples.count));
      outs[j].shape.insert(outs[j].shape.end(), info.shape, info.shape + info.ndim);
      outs[j].data.reserve(samples.count * info.nbytes);
    }
    for (size_t k = 0; k < samples.count; ++k) {
      SetSample(m, samples, k);
      RunSample(m, k, samples.count);
      for (int j = 0; j < n_out; ++j) {
        const void* data;
        size_t nbytes;
        Check(intformer_get_output(m, j, &data, &nbytes));
        const uint8_t* p = static_cast<const uint8_t*>(data);
        outs[j].data.insert(outs[j].data.end(), p, p + nbytes);
      }
    }
    try {
      npz::Save(o.output, outs);
    } catch (const npz::NpzError& e) {
      throw InputError(e.what());
    }
    std::printf("wrote %s (%zu samples)\n", o.output.c_str(), samples.count);
  }
  if (o.bench > 0) {
    SetSample(m, samples, 0);
    auto t1 = std::chrono::steady_clock::now();
    RunSample(m, 0, 1);  // warm-up (the first run allocates the VM's pools and starts the threads)
    double first_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
    std::vector<double> ms;
    for (int r = 0; r < o.bench; ++r) {
      auto a = std::chrono::steady_clock::now();
      RunSample(m, 0, 1);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(ms.begin(), ms.end());
    double median = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
    std::printf("load %.1f ms, first run %.2f ms, median %.3f ms over %d runs (min %.3f, max %.3f), "
                "peak memory %.1f MB (VmHWM), resident now %.1f MB\n",
                load_ms, first_ms, median, o.bench, ms.front(), ms.back(), StatusKb("VmHWM:") / 1024.0,
                StatusKb("VmRSS:") / 1024.0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "intformer-run: error: %s (see intformer-run --help)\n", e.what());
    return 2;
  } catch (const InputError& e) {
    std::fprintf(stderr, "intformer-run: error: %s\n", e.what());
    return 2;
  } catch (const RuntimeFailure& e) {
    std::fprintf(stderr, "intformer-run: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "intformer-run: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "intformer-run: internal error: %s\n", e.what());
    return 1;
  }
}
