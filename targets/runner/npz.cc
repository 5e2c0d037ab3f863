#include "npz.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace npz {

namespace {

// ---- CRC-32 (the zip polynomial 0xEDB88320) ------------------------------------------------------------------
uint32_t Crc32(const uint8_t* p, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// ---- inflate (RFC 1951): canonical Huffman codes decoded a bit at a time -----------------------------------------
struct Huffman {
  uint16_t count[16] = {0};  // codes of each length
  uint16_t symbol[320] = {0};  // symbols ordered by code
};

class Inflater {
 public:
  Inflater(const uint8_t* in, size_t n, size_t expected) : in_(in), n_(n), limit_(expected) { out_.reserve(expected); }

  std::vector<uint8_t> Run() {
    int last;
    do {
      last = Bits(1);
      int type = Bits(2);
      if (type == 0) {
        Stored();
      } else if (type == 1) {
        Fixed();
      } else if (type == 2) {
        Dynamic();
      } else {
        throw NpzError("invalid deflate block type");
      }
    } while (!last);
    return std::move(out_);
  }

 private:
  int Bits(int need) {
    uint32_t val = bitbuf_;
    while (bitcnt_ < need) {
      if (pos_ >= n_) throw NpzError("compressed data is truncated");
      val |= static_cast<uint32_t>(in_[pos_++]) << bitcnt_;
      bitcnt_ += 8;
    }
    bitbuf_ = val >> need;
    bitcnt_ -= need;
    return static_cast<int>(val & ((1u << need) - 1));
  }

  void Put(uint8_t b) {
    if (out_.size() >= limit_) throw NpzError("compressed data inflates past its recorded size");
    out_.push_back(b);
  }

  void Stored() {
    bitbuf_ = 0;
    bitcnt_ = 0;
    if (pos_ + 4 > n_) throw NpzError("compressed data is truncated");
    unsigned len = in_[pos_] | (in_[pos_ + 1] << 8);
    unsigned nlen = in_[pos_ + 2] | (in_[pos_ + 3] << 8);
    pos_ += 4;
    if (len != (~nlen & 0xFFFFu)) throw NpzError("corrupt stored block");
    if (pos_ + len > n_) throw NpzError("compressed data is truncated");
    for (unsigned i = 0; i < len; ++i) Put(in_[pos_ + i]);
    pos_ += len;
  }

  int Decode(const Huffman& h) {
    int code = 0, first = 0, index = 0;
    for (int len = 1; len < 16; ++len) {
      code |= Bits(1);
      int count = h.count[len];
      if (code - count < first) return h.symbol[index + (code - first)];
      index += count;
      first += count;
      first <<= 1;
      code <<= 1;
    }
    throw NpzError("corrupt compressed data (bad Huffman code)");
  }

  static void Build(Huffman* h, const uint16_t* lengths, int n) {
    std::memset(h->count, 0, sizeof h->count);
    for (int s = 0; s < n; ++s) h->count[lengths[s]]++;
    int left = 1;
    for (int len = 1; len < 16; ++len) {
      left <<= 1;
      left -= h->count[len];
      if (left < 0) throw NpzError("corrupt compressed data (over-subscribed code)");
    }
    uint16_t offs[16];
    offs[1] = 0;
    for (int len = 1; len < 15; ++len) offs[len + 1] = offs[len] + h->count[len];
    for (int s = 0; s < n; ++s)
      if (lengths[s] != 0) h->symbol[offs[lengths[s]]++] = static_cast<uint16_t>(s);
  }

  void Codes(const Huffman& lencode, const Huffman& distcode) {
    static const uint16_t kLenBase[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27,
                                          31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint16_t kLenExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                           2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const uint16_t kDistBase[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129,
                                           193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097,
                                           6145, 8193, 12289, 16385, 24577};
    static const uint16_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6,
                                            6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    for (;;) {
      int sym = Decode(lencode);
      if (sym < 256) {
        Put(static_cast<uint8_t>(sym));
      } else if (sym == 256) {
        return;
      } else {
        sym -= 257;
        if (sym >= 29) throw NpzError("corrupt compressed data (bad length)");
        size_t len = kLenBase[sym] + Bits(kLenExtra[sym]);
        int dsym = Decode(distcode);
        if (dsym >= 30) throw NpzError("corrupt compressed data (bad distance)");
        size_t dist = kDistBase[dsym] + Bits(kDistExtra[dsym]);
        if (dist > out_.size()) throw NpzError("corrupt compressed data (distance too far back)");
        for (size_t i = 0; i < len; ++i) Put(out_[out_.size() - dist]);
      }
    }
  }

  void Fixed() {
    static Huffman lencode, distcode;
    static bool ready = false;
    if (!ready) {
      uint16_t lengths[288];
      int s = 0;
      for (; s < 144; ++s) lengths[s] = 8;
      for (; s < 256; ++s) lengths[s] = 9;
      for (; s < 280; ++s) lengths[s] = 7;
      for (; s < 288; ++s) lengths[s] = 8;
      Build(&lencode, lengths, 288);
      for (s = 0; s < 30; ++s) lengths[s] = 5;
      Build(&distcode, lengths, 30);
      ready = true;
    }
    Codes(lencode, distcode);
  }

  void Dynamic() {
    static const uint8_t kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    int nlen = Bits(5) + 257, ndist = Bits(5) + 1, ncode = Bits(4) + 4;
    if (nlen > 286 || ndist > 30) throw NpzError("corrupt compressed data (bad code counts)");
    uint16_t lengths[320] = {0};
    for (int i = 0; i < ncode; ++i) lengths[kOrder[i]] = static_cast<uint16_t>(Bits(3));
    Huffman lencode, distcode;
    Build(&lencode, lengths, 19);
    int index = 0;
    while (index < nlen + ndist) {
      int sym = Decode(lencode);
      if (sym < 16) {
        lengths[index++] = static_cast<uint16_t>(sym);
      } else {
        int len = 0, rep;
        if (sym == 16) {
          if (index == 0) throw NpzError("corrupt compressed data (repeat with no previous length)");
          len = lengths[index - 1];
          rep = 3 + Bits(2);
        } else if (sym == 17) {
          rep = 3 + Bits(3);
        } else {
          rep = 11 + Bits(7);
        }
        if (index + rep > nlen + ndist) throw NpzError("corrupt compressed data (too many lengths)");
        while (rep--) lengths[index++] = static_cast<uint16_t>(len);
      }
    }
    if (lengths[256] == 0) throw NpzError("corrupt compressed data (no end-of-block code)");
    Build(&lencode, lengths, nlen);
    Build(&distcode, lengths + nlen, ndist);
    Codes(lencode, distcode);
  }

  const uint8_t* in_;
  size_t n_, pos_ = 0, limit_;
  uint32_t bitbuf_ = 0;
  int bitcnt_ = 0;
  std::vector<uint8_t> out_;
};

// ---- little-endian fields --------------------------------------------------------------------------------------
uint64_t Le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void PutLe(std::string* s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// ---- the .npy header: {'descr': '<i8', 'fortran_order': False, 'shape': (8, 1, 16), } ------------------------
std::string DictValue(const std::string& header, const std::string& key) {
  auto k = header.find("'" + key + "'");
  if (k == std::string::npos) throw NpzError("its .npy header has no '" + key + "'");
  auto colon = header.find(':', k);
  if (colon == std::string::npos) throw NpzError("bad .npy header");
  size_t i = colon + 1;
  while (i < header.size() && header[i] == ' ') ++i;
  size_t end;
  if (i < header.size() && header[i] == '(') {
    end = header.find(')', i);
    if (end == std::string::npos) throw NpzError("bad .npy header");
    return header.substr(i, end - i + 1);
  }
  if (i < header.size() && (header[i] == '\'' || header[i] == '"')) {
    end = header.find(header[i], i + 1);
    if (end == std::string::npos) throw NpzError("bad .npy header");
    return header.substr(i + 1, end - i - 1);
  }
  end = header.find_first_of(",}", i);
  if (end == std::string::npos) throw NpzError("bad .npy header");
  return header.substr(i, end - i);
}

void ParseNpy(Array* a, const std::vector<uint8_t>& raw) {
  static const char kMagic[] = "\x93NUMPY";
  if (raw.size() < 10 || std::memcmp(raw.data(), kMagic, 6) != 0) throw NpzError("not a .npy array");
  int major = raw[6];
  size_t hlen, start;
  if (major == 1) {
    hlen = Le(&raw[8], 2);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (raw.size() < 12) throw NpzError("truncated .npy header");
    hlen = Le(&raw[8], 4);
    start = 12;
  } else {
    throw NpzError(".npy format version " + std::to_string(major) + " is not supported");
  }
  if (start + hlen > raw.size()) throw NpzError("truncated .npy header");
  std::string header(reinterpret_cast<const char*>(&raw[start]), hlen);
  std::string descr = DictValue(header, "descr");
  if (descr.size() < 3) throw NpzError("dtype '" + descr + "' is not supported (only numeric arrays)");
  char order = descr[0], kind = descr[1];
  size_t itemsize = 0;
  try {
    itemsize = std::stoul(descr.substr(2));
  } catch (...) {
    throw NpzError("dtype '" + descr + "' is not supported (only numeric arrays)");
  }
  bool sized = (kind == 'i' || kind == 'u') ? (itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8)
               : kind == 'f'               ? (itemsize == 2 || itemsize == 4 || itemsize == 8)
               : kind == 'b'               ? itemsize == 1
                                           : false;
  if (!sized) throw NpzError("dtype '" + descr + "' is not supported (only bool, integer and float arrays)");
  if (order == '>' && itemsize > 1) throw NpzError("big-endian dtype '" + descr + "' is not supported");
  a->kind = kind == 'i' ? 'b' : kind == 'b' ? '?' : kind;
  a->itemsize = itemsize;
  std::string fortran = DictValue(header, "fortran_order");
  std::string shape = DictValue(header, "shape");
  a->shape.clear();
  std::string num;
  for (char c : shape.substr(1)) {
    if (c >= '0' && c <= '9') {
      num.push_back(c);
    } else if (c == ',' || c == ')') {
      if (!num.empty()) a->shape.push_back(std::stoll(num));
      num.clear();
    } else if (c != ' ' && c != 'L') {
      throw NpzError("bad shape " + shape + " in its .npy header");
    }
  }
  size_t n = a->size();
  if (fortran.find("True") != std::string::npos && a->shape.size() > 1 && n > 1)
    throw NpzError("is stored in Fortran order; save it C-contiguous (np.ascontiguousarray)");
  size_t body = raw.size() - start - hlen;
  if (body < n * itemsize)
    throw NpzError("is truncated: " + std::to_string(body) + " bytes of data for shape " + a->shape_str() + " " +
                   a->dtype_name() + " (" + std::to_string(n * itemsize) + " bytes)");
  a->data.assign(raw.begin() + start + hlen, raw.begin() + start + hlen + n * itemsize);
}

}  // namespace

size_t Array::size() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

std::string Array::dtype_name() const {
  if (kind == '?') return "bool";
  std::string base = kind == 'b' ? "int" : kind == 'u' ? "uint" : "float";
  return base + std::to_string(itemsize * 8);
}

std::string Array::shape_str() const {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

bool ParseDTypeName(const std::string& name, char* kind, size_t* itemsize) {
  struct {
    const char* name;
    char kind;
    size_t size;
  } static const kNames[] = {{"bool", '?', 1},   {"int8", 'b', 1},   {"int16", 'b', 2},  {"int32", 'b', 4},
                             {"int64", 'b', 8},  {"uint8", 'u', 1},  {"uint16", 'u', 2}, {"uint32", 'u', 4},
                             {"uint64", 'u', 8}, {"float16", 'f', 2}, {"float32", 'f', 4}, {"float64", 'f', 8}};
  for (const auto& d : kNames) {
    if (name == d.name) {
      *kind = d.kind;
      *itemsize = d.size;
      return true;
    }
  }
  return false;
}

std::vector<Array> Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw NpzError(path + ": no such file");
  std::vector<uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t n = buf.size();
  auto bad = [&](const std::string& why) { return NpzError(path + ": not a readable .npz file (" + why + ")"); };
  if (n < 22) throw bad("too short for a zip archive");
  // the end-of-central-directory record: last signature PK\5\6 within the final 64 KiB + 22 bytes
  size_t eocd = std::string::npos;
  for (size_t i = n - 22 + 1; i-- > 0 && n - i <= 65535 + 22;) {
    if (Le(&buf[i], 4) == 0x06054b50u) {
      eocd = i;
      break;
    }
  }
  if (eocd == std::string::npos) throw bad("no zip directory: not a zip file, or truncated");
  uint64_t entries = Le(&buf[eocd + 10], 2), cd_size = Le(&buf[eocd + 12], 4), cd_off = Le(&buf[eocd + 16], 4);
  if ((entries == 0xFFFF || cd_off == 0xFFFFFFFFu || cd_size == 0xFFFFFFFFu) && eocd >= 20 &&
      Le(&buf[eocd - 20], 4) == 0x07064b50u) {
    uint64_t z = Le(&buf[eocd - 20 + 8], 8);
    if (z + 56 > n || Le(&buf[z], 4) != 0x06064b50u) throw bad("corrupt zip64 directory");
    entries = Le(&buf[z + 32], 8);
    cd_size = Le(&buf[z + 40], 8);
    cd_off = Le(&buf[z + 48], 8);
  }
  if (cd_off > n || cd_size > n - cd_off) throw bad("its directory lies past the end of the file: truncated");
  std::vector<Array> out;
  size_t p = cd_off;
  for (uint64_t e = 0; e < entries; ++e) {
    if (p + 46 > n || Le(&buf[p], 4) != 0x02014b50u) throw bad("corrupt zip directory");
    int flags = static_cast<int>(Le(&buf[p + 8], 2)), method = static_cast<int>(Le(&buf[p + 10], 2));
    uint32_t crc = static_cast<uint32_t>(Le(&buf[p + 16], 4));
    uint64_t csize = Le(&buf[p + 20], 4), usize = Le(&buf[p + 24], 4);
    size_t nlen = Le(&buf[p + 28], 2), xlen = Le(&buf[p + 30], 2), clen = Le(&buf[p + 32], 2);
    uint64_t local = Le(&buf[p + 42], 4);
    if (p + 46 + nlen + xlen + clen > n) throw bad("corrupt zip directory");
    std::string name;  // printable ASCII, anything else as \xNN (names end up in error messages)
    for (size_t i = 0; i < nlen; ++i) {
      uint8_t c = buf[p + 46 + i];
      if (c >= 0x20 && c < 0x7f) {
        name.push_back(static_cast<char>(c));
      } else {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\x%02x", c);
        name += esc;
      }
    }
    for (size_t x = p + 46 + nlen; x + 4 <= p + 46 + nlen + xlen;) {  // the zip64 extra field
      size_t id = Le(&buf[x], 2), sz = Le(&buf[x + 2], 2), q = x + 4;
      if (id == 1) {
        if (usize == 0xFFFFFFFFu && q + 8 <= x + 4 + sz) usize = Le(&buf[q], 8), q += 8;
        if (csize == 0xFFFFFFFFu && q + 8 <= x + 4 + sz) csize = Le(&buf[q], 8), q += 8;
        if (local == 0xFFFFFFFFu && q + 8 <= x + 4 + sz) local = Le(&buf[q], 8), q += 8;
      }
      x += 4 + sz;
    }
    p += 46 + nlen + xlen + clen;
    if (flags & 1) throw bad("'" + name + "' is encrypted");
    if (local + 30 > n || Le(&buf[local], 4) != 0x04034b50u) throw bad("'" + name + "' is missing: truncated");
    size_t data = local + 30 + Le(&buf[local + 26], 2) + Le(&buf[local + 28], 2);
    if (data > n || csize > n - data) throw bad("'" + name + "' is truncated");
    std::vector<uint8_t> raw;
    if (method == 0) {
      raw.assign(buf.begin() + data, buf.begin() + data + csize);
    } else if (method == 8) {
      try {
        raw = Inflater(&buf[data], csize, usize).Run();
      } catch (const NpzError& err) {
        throw bad("'" + name + "': " + err.what());
      }
    } else {
      throw bad("'" + name + "' uses zip compression method " + std::to_string(method) +
                "; only stored and deflate (np.savez, np.savez_compressed) are supported");
    }
    if (raw.size() != usize) throw bad("'" + name + "' has the wrong size: truncated or corrupt");
    if (Crc32(raw.data(), raw.size()) != crc) throw bad("'" + name + "' fails its CRC check: corrupt");
    Array a;
    a.name = name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0 ? name.substr(0, name.size() - 4)
                                                                             : name;
    try {
      ParseNpy(&a, raw);
    } catch (const NpzError& err) {
      throw NpzError(path + ": array '" + a.name + "' " + err.what());
    }
    out.push_back(std::move(a));
  }
  return out;
}

void Save(const std::string& path, const std::vector<Array>& arrays) {
  std::string zip, dir;
  for (const Array& a : arrays) {
    std::string descr = std::string(a.kind == '?' ? "|" : "<") + (a.kind == 'b' ? 'i' : a.kind) +
                        std::to_string(a.itemsize);
    if (a.kind == '?') descr = "|b1";
    std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + a.shape_str() + ", }";
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    std::string npy("\x93NUMPY\x01\x00", 8);
    PutLe(&npy, header.size(), 2);
    npy += header;
    npy.append(reinterpret_cast<const char*>(a.data.data()), a.data.size());
    if (npy.size() >= 0xFFFFFFFFull || zip.size() >= 0xFFFFFFFFull)
      throw NpzError(path + ": outputs of 4 GiB or more are not supported");
    uint32_t crc = Crc32(reinterpret_cast<const uint8_t*>(npy.data()), npy.size());
    std::string name = a.name + ".npy";
    size_t offset = zip.size();
    PutLe(&zip, 0x04034b50u, 4);
    PutLe(&zip, 20, 2);  // version needed
    PutLe(&zip, 0, 2);   // flags
    PutLe(&zip, 0, 2);   // stored
    PutLe(&zip, 0, 2);   // time
    PutLe(&zip, 0x21, 2);  // date: 1980-01-01
    PutLe(&zip, crc, 4);
    PutLe(&zip, npy.size(), 4);
    PutLe(&zip, npy.size(), 4);
    PutLe(&zip, name.size(), 2);
    PutLe(&zip, 0, 2);
    zip += name;
    zip += npy;
    PutLe(&dir, 0x02014b50u, 4);
    PutLe(&dir, 20, 2);
    PutLe(&dir, 20, 2);
    PutLe(&dir, 0, 2);
    PutLe(&dir, 0, 2);
    PutLe(&dir, 0, 2);
    PutLe(&dir, 0x21, 2);
    PutLe(&dir, crc, 4);
    PutLe(&dir, npy.size(), 4);
    PutLe(&dir, npy.size(), 4);
    PutLe(&dir, name.size(), 2);
    PutLe(&dir, 0, 2);  // extra
    PutLe(&dir, 0, 2);  // comment
    PutLe(&dir, 0, 2);  // disk
    PutLe(&dir, 0, 2);  // internal attributes
    PutLe(&dir, 0, 4);  // external attributes
    PutLe(&dir, offset, 4);
    dir += name;
  }
  size_t cd_off = zip.size();
  zip += dir;
  PutLe(&zip, 0x06054b50u, 4);
  PutLe(&zip, 0, 2);
  PutLe(&zip, 0, 2);
  PutLe(&zip, arrays.size(), 2);
  PutLe(&zip, arrays.size(), 2);
  PutLe(&zip, dir.size(), 4);
  PutLe(&zip, cd_off, 4);
  PutLe(&zip, 0, 2);
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw NpzError(path + ": cannot write (does its directory exist?)");
    f.write(zip.data(), static_cast<std::streamsize>(zip.size()));
    if (!f) throw NpzError(path + ": write failed (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw NpzError(path + ": cannot write");
  }
}

}  // namespace npz
