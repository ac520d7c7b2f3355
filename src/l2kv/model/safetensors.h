// Reading Hugging Face checkpoints: *.safetensors files, memory-mapped, single or sharded
// (model.safetensors.index.json). Every problem is an l2kv::Error naming the file and tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace l2kv {

enum class TensorDType : uint8_t { kF32, kF16, kBF16, kF8E4M3, kOther };

struct TensorView {
  std::string name;
  std::string file;  // for error messages
  TensorDType dtype = TensorDType::kOther;
  std::string dtype_name;  // as written in the header ("BF16", "F32", ...)
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping
  size_t bytes = 0;

  int64_t elements() const;
  // The values as float32 (F32, F16, BF16 or F8_E4M3; other dtypes throw).
  std::vector<float> to_float() const;
  // Rows [row_begin, row_begin + rows) and columns [col_begin, col_begin + cols) of a 2-D tensor
  // (a 1-D tensor is one row of its length), row-major, as float32: only those elements are read
  // from the mapping (a tensor-parallel rank's slice). Throws l2kv::Error outside the shape.
  std::vector<float> to_float(int64_t row_begin, int64_t rows, int64_t col_begin,
                              int64_t cols) const;
  // The same elements' bytes, for 1-byte dtypes (fp8 codes).
  std::vector<uint8_t> bytes_of(int64_t row_begin, int64_t rows, int64_t col_begin,
                                int64_t cols) const;
};

// The largest header accepted, as the safetensors format itself limits it (100 MB): a larger
// length field is a corrupt or hostile file, not a checkpoint.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Validates the bytes of a whole .safetensors file (header length, header JSON, each tensor's
// offsets, dtype and shape) and returns its tensors, whose data point into `bytes`. `file`
// names the file in error messages. Throws l2kv::Error for anything malformed.
std::map<std::string, TensorView> parse_safetensors(const uint8_t* bytes, size_t size,
                                                    const std::string& file);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  // Maps and validates `path`: header length within the file, header JSON, each tensor's
  // offsets inside the data area and consistent with its dtype and shape.
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  void* mapping_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
};

// All tensors of a model folder.
class Checkpoint {
 public:
  // Opens model.safetensors.index.json and its shards, or model.safetensors, or every
  // *.safetensors file in `folder`.
  explicit Checkpoint(const std::filesystem::path& folder);

  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  // The tensor `name` of any shape, or null when the checkpoint has none.
  const TensorView* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : it->second;
  }
  // Throws l2kv::Error when the tensor is missing or its shape differs from `expected_shape`.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  const std::filesystem::path& folder() const { return folder_; }

 private:
  std::filesystem::path folder_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace l2kv
