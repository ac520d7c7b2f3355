#include "l2kv/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>

#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"

namespace l2kv {
namespace {

size_t dtype_size(TensorDType t) {
  return t == TensorDType::kF32 ? 4 : t == TensorDType::kF8E4M3 ? 1 : 2;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A list of JSON integers: get<std::vector<int64_t>>() would also take floats, whose
// conversion is undefined beyond the integer's range (1e308).
template <typename Int>
std::vector<Int> integers(const nlohmann::json& list, const std::string& file,
                          const std::string& tensor, const char* what) {
  const auto malformed = [&] {
    return Error(file + ": tensor " + tensor + " has a malformed header entry (" + what +
                 " must be a list of " +
                 (std::is_signed_v<Int> ? "integers" : "non-negative integers") + ")");
  };
  if (!list.is_array()) throw malformed();
  std::vector<Int> out;
  for (const auto& v : list) {
    const bool fits =
        std::is_signed_v<Int>
            ? v.is_number_integer() &&
                  (!v.is_number_unsigned() ||
                   v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
            : v.is_number_unsigned();
    if (!fits) throw malformed();
    out.push_back(v.get<Int>());
  }
  return out;
}

}  // namespace

int64_t TensorView::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// `count` elements of `t` from element `first` on, as float32, into `out`.
void convert(const TensorView& t, int64_t first, int64_t count, float* out) {
  const uint8_t* data = t.data;
  if (t.dtype == TensorDType::kF32) {
    if (count > 0) std::memcpy(out, data + 4 * first, static_cast<size_t>(count) * 4);
    return;
  }
  if (t.dtype == TensorDType::kF8E4M3) {
    for (int64_t i = 0; i < count; ++i) out[i] = fp8_e4m3_bits_to_float(data[first + i]);
    return;
  }
  if (t.dtype != TensorDType::kF16 && t.dtype != TensorDType::kBF16)
    throw Error(t.file + ": tensor " + t.name + " has dtype " + t.dtype_name +
                "; l2kv reads F32, F16, BF16 and F8_E4M3");
  for (int64_t i = 0; i < count; ++i) {
    uint16_t bits;
    std::memcpy(&bits, data + 2 * (first + i), 2);
    out[i] = t.dtype == TensorDType::kF16 ? fp16_bits_to_float(bits) : bf16_bits_to_float(bits);
  }
}

// The row length of a 1-D or 2-D tensor, after checking the slice lies inside it.
int64_t checked_row_length(const TensorView& t, int64_t row_begin, int64_t rows, int64_t col_begin,
                           int64_t cols) {
  if (t.shape.empty() || t.shape.size() > 2)
    throw Error(t.file + ": tensor " + t.name + " is not 1-D or 2-D; it cannot be sliced");
  const int64_t num_rows = t.shape.size() == 2 ? t.shape[0] : 1;
  const int64_t row_length = t.shape.back();
  if (row_begin < 0 || rows < 0 || row_begin + rows > num_rows || col_begin < 0 || cols < 0 ||
      col_begin + cols > row_length)
    throw Error(t.file + ": tensor " + t.name + ": slice of rows [" + std::to_string(row_begin) +
                ", " + std::to_string(row_begin + rows) + ") and columns [" +
                std::to_string(col_begin) + ", " + std::to_string(col_begin + cols) +
                ") is outside its shape");
  return row_length;
}

}  // namespace

std::vector<float> TensorView::to_float() const {
  std::vector<float> out(static_cast<size_t>(elements()));
  convert(*this, 0, elements(), out.data());
  return out;
}

std::vector<float> TensorView::to_float(int64_t row_begin, int64_t rows, int64_t col_begin,
                                        int64_t cols) const {
  const int64_t row_length = checked_row_length(*this, row_begin, rows, col_begin, cols);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    convert(*this, (row_begin + r) * row_length + col_begin, cols, out.data() + r * cols);
  return out;
}

std::vector<uint8_t> TensorView::bytes_of(int64_t row_begin, int64_t rows, int64_t col_begin,
                                          int64_t cols) const {
  const int64_t row_length = checked_row_length(*this, row_begin, rows, col_begin, cols);
  if (dtype != TensorDType::kF8E4M3)
    throw Error(file + ": tensor " + name + " has dtype " + dtype_name +
                "; byte slices are of 1-byte (F8_E4M3) tensors");
  std::vector<uint8_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out.data() + r * cols, data + (row_begin + r) * row_length + col_begin,
                static_cast<size_t>(cols));
  return out;
}

std::map<std::string, TensorView> parse_safetensors(const uint8_t* bytes, size_t size,
                                                    const std::string& file) {
  if (size < 8)
    throw Error(file + ": truncated (" + std::to_string(size) + " bytes, no header length)");
  std::map<std::string, TensorView> tensors;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little endian
  if (header_len > size - 8)
    throw Error(file + ": header of " + std::to_string(header_len) +
                " bytes points past the end of the " + std::to_string(size) + "-byte file");
  if (header_len > kMaxSafetensorsHeaderBytes)
    throw Error(file + ": header of " + std::to_string(header_len) + " bytes is over the " +
                std::to_string(kMaxSafetensorsHeaderBytes) + "-byte limit");
  nlohmann::json header;
  // JSON keeps the last of repeated keys: a tensor named twice is refused instead.
  std::set<std::string> names;
  std::string repeated;
  const auto note_names = [&](int depth, nlohmann::json::parse_event_t event,
                              nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && repeated.empty() &&
        !names.insert(parsed.get<std::string>()).second)
      repeated = parsed.get<std::string>();
    return true;
  };
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len, note_names);
  } catch (const nlohmann::json::exception& e) {
    throw Error(file + ": header is not JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw Error(file + ": header is not a JSON object");
  if (!repeated.empty()) throw Error(file + ": header names tensor " + repeated + " twice");
  const uint8_t* data = bytes + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    TensorView t;
    t.name = name;
    t.file = file;
    try {
      t.dtype_name = info.at("dtype").get<std::string>();
      t.shape = integers<int64_t>(info.at("shape"), file, name, "shape");
      const auto offsets = integers<uint64_t>(info.at("data_offsets"), file, name, "data offsets");
      if (offsets.size() != 2 || offsets[0] > offsets[1])
        throw Error(file + ": tensor " + name +
                    " needs data offsets [begin, end] with begin <= end");
      if (offsets[1] > data_size)
        throw Error(file + ": tensor " + name + " has data offsets outside the file (truncated?)");
      t.data = data + offsets[0];
      t.bytes = offsets[1] - offsets[0];
    } catch (const nlohmann::json::exception& e) {
      throw Error(file + ": tensor " + name + " has a malformed header entry (" + e.what() + ")");
    }
    t.dtype = t.dtype_name == "F32"       ? TensorDType::kF32
              : t.dtype_name == "F16"     ? TensorDType::kF16
              : t.dtype_name == "BF16"    ? TensorDType::kBF16
              : t.dtype_name == "F8_E4M3" ? TensorDType::kF8E4M3
                                          : TensorDType::kOther;
    // Every dimension non-negative and the element count representable: a product that
    // overflows could otherwise match the byte count by wrapping around.
    int64_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw Error(file + ": tensor " + name + " has a negative dimension");
      if (d != 0 && elements > std::numeric_limits<int64_t>::max() / d)
        throw Error(file + ": tensor " + name + " of shape " + shape_text(t.shape) +
                    " has too many elements");
      elements *= d;
    }
    if (t.dtype != TensorDType::kOther &&
        static_cast<uint64_t>(elements) > std::numeric_limits<uint64_t>::max() / 4)
      throw Error(file + ": tensor " + name + " of shape " + shape_text(t.shape) +
                  " has too many elements");
    if (t.dtype != TensorDType::kOther &&
        static_cast<size_t>(elements) * dtype_size(t.dtype) != t.bytes)
      throw Error(file + ": tensor " + name + " of shape " + shape_text(t.shape) + " and dtype " +
                  t.dtype_name + " should hold " +
                  std::to_string(static_cast<uint64_t>(elements) * dtype_size(t.dtype)) +
                  " bytes, not " + std::to_string(t.bytes));
    tensors.emplace(name, std::move(t));
  }
  // No two tensors share bytes (the format's rule; a shared range would load one tensor's
  // weights as another's).
  std::vector<const TensorView*> by_offset;
  for (const auto& [name, t] : tensors)
    if (t.bytes > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->data < by_offset[i - 1]->data + by_offset[i - 1]->bytes)
      throw Error(file + ": tensors " + by_offset[i - 1]->name + " and " + by_offset[i]->name +
                  " have overlapping data offsets");
  return tensors;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) {
  const std::string file = path.string();
  const int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) throw Error(file + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    throw Error(file + ": cannot stat (" + std::strerror(error) + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(file + ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw Error(file + ": truncated (" + std::to_string(size_) + " bytes, no header length)");
  }
  mapping_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int error = errno;
  ::close(fd);
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    throw Error(file + ": mmap failed (" + std::strerror(error) + ")");
  }
  try {
    tensors_ = parse_safetensors(static_cast<const uint8_t*>(mapping_), size_, file);
  } catch (...) {
    ::munmap(mapping_, size_);
    mapping_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(mapping_, size_);
}

Checkpoint::Checkpoint(const std::filesystem::path& folder) : folder_(folder) {
  if (!std::filesystem::is_directory(folder)) throw Error(folder.string() + ": not a model folder");
  std::vector<std::filesystem::path> shards;
  const auto index_path = folder / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    std::ifstream f(index_path);
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(f);
    } catch (const nlohmann::json::exception& e) {
      throw Error(index_path.string() + ": not JSON (" + e.what() + ")");
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      throw Error(index_path.string() + ": no weight_map");
    std::set<std::string> names;
    for (const auto& [tensor, shard] : index["weight_map"].items())
      names.insert(shard.get<std::string>());
    for (const auto& n : names) {
      if (!std::filesystem::exists(folder / n))
        throw Error(index_path.string() + " names missing shard " + n);
      shards.push_back(folder / n);
    }
  } else if (std::filesystem::exists(folder / "model.safetensors")) {
    shards.push_back(folder / "model.safetensors");
  } else {
    for (const auto& e : std::filesystem::directory_iterator(folder))
      if (e.path().extension() == ".safetensors") shards.push_back(e.path());
    std::sort(shards.begin(), shards.end());
  }
  if (shards.empty()) throw Error(folder.string() + ": no .safetensors files");
  for (const auto& s : shards) {
    files_.push_back(std::make_unique<SafetensorsFile>(s));
    for (const auto& [name, view] : files_.back()->tensors()) index_[name] = &view;
  }
}

const TensorView& Checkpoint::get(const std::string& name,
                                  const std::vector<int64_t>& expected_shape) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw Error(folder_.string() + ": missing tensor " + name);
  if (it->second->shape != expected_shape)
    throw Error(it->second->file + ": tensor " + name + " has shape " +
                shape_text(it->second->shape) + ", expected " + shape_text(expected_shape));
  return *it->second;
}

}  // namespace l2kv
