// Reading and writing NumPy .npz files without NumPy or zlib: a zip reader (stored and deflate entries, zip64),
// a small inflate (RFC 1951), CRC-32, and the .npy header. Errors are NpzError with a one-line message.
#ifndef INTFORMER_RUNNER_NPZ_H_
#define INTFORMER_RUNNER_NPZ_H_

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace npz {

struct NpzError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Array {
  std::string name;     // the .npz key (the entry name without ".npy")
  char kind = 0;        // 'b' signed int, 'u' unsigned int, 'f' float, '?' bool
  size_t itemsize = 0;  // bytes per element
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // little-endian, C order

  size_t size() const;                // number of elements
  std::string dtype_name() const;     // NumPy's name: "int64", "float32", "bool"
  std::string shape_str() const;      // "(8, 1, 16)"
};

// All arrays of the .npz at `path`, in the file's order. Throws NpzError naming the file on anything wrong:
// missing, not a zip, truncated, a bad checksum, an unsupported compression or dtype, a bad .npy header.
std::vector<Array> Load(const std::string& path);

// Write `arrays` as an uncompressed .npz (what np.savez writes); atomically (a temporary name, then rename).
void Save(const std::string& path, const std::vector<Array>& arrays);

// The kind and item size of a NumPy dtype name ("int64" -> 'b', 8); false if unknown.
bool ParseDTypeName(const std::string& name, char* kind, size_t* itemsize);

}  // namespace npz

#endif  // INTFORMER_RUNNER_NPZ_H_
