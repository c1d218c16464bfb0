// The C API of librlhf_spm.so (see spm_shim.h). Everything here is exception-free at the seam.
#include "spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#define RLHF_SPM_EXPORT extern "C" __attribute__((visibility("default")))

struct rlhf_spm {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {

thread_local std::string g_last_error;

void set_error(std::string message) { g_last_error = std::move(message); }

// Copies `data` into `out` when it fits; returns the size needed.
long copy_out(const std::string& data, char* out, size_t cap) {
  if (out && data.size() <= cap) std::memcpy(out, data.data(), data.size());
  return static_cast<long>(data.size());
}

}  // namespace

RLHF_SPM_EXPORT int rlhf_spm_api_version(void) { return RLHF_SPM_API_VERSION; }

RLHF_SPM_EXPORT const char* rlhf_spm_last_error(void) { return g_last_error.c_str(); }

RLHF_SPM_EXPORT rlhf_spm* rlhf_spm_load(const char* model_path) {
  try {
    auto* sp = new rlhf_spm();
    const auto status = sp->processor.Load(model_path ? model_path : "");
    if (!status.ok()) {
      set_error(status.ToString());
      delete sp;
      return nullptr;
    }
    return sp;
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown exception in SentencePiece Load");
  }
  return nullptr;
}

RLHF_SPM_EXPORT void rlhf_spm_free(rlhf_spm* sp) { delete sp; }

RLHF_SPM_EXPORT long rlhf_spm_encode(const rlhf_spm* sp, const char* text, size_t text_len,
                                     int* out, size_t cap) {
  try {
    std::vector<int> ids;
    const auto status = sp->processor.Encode(std::string(text, text_len), &ids);
    if (!status.ok()) {
      set_error(status.ToString());
      return -1;
    }
    if (out && ids.size() <= cap) std::memcpy(out, ids.data(), ids.size() * sizeof(int));
    return static_cast<long>(ids.size());
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown exception in SentencePiece Encode");
  }
  return -1;
}

RLHF_SPM_EXPORT long rlhf_spm_decode(const rlhf_spm* sp, const int* ids, size_t n, char* out,
                                     size_t cap) {
  try {
    const int size = sp->processor.GetPieceSize();
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] >= size) {
        set_error("id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                  " is out of range [0, " + std::to_string(size) + ")");
        return -1;
      }
    }
    std::string text;
    const auto status = sp->processor.Decode(std::vector<int>(ids, ids + n), &text);
    if (!status.ok()) {
      set_error(status.ToString());
      return -1;
    }
    return copy_out(text, out, cap);
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown exception in SentencePiece Decode");
  }
  return -1;
}

RLHF_SPM_EXPORT long rlhf_spm_id_to_piece(const rlhf_spm* sp, int id, char* out, size_t cap) {
  if (id < 0 || id >= sp->processor.GetPieceSize()) {
    set_error("id " + std::to_string(id) + " is out of range [0, " +
              std::to_string(sp->processor.GetPieceSize()) + ")");
    return -1;
  }
  return copy_out(sp->processor.IdToPiece(id), out, cap);
}

RLHF_SPM_EXPORT int rlhf_spm_vocab_size(const rlhf_spm* sp) { return sp->processor.GetPieceSize(); }
RLHF_SPM_EXPORT int rlhf_spm_bos_id(const rlhf_spm* sp) { return sp->processor.bos_id(); }
RLHF_SPM_EXPORT int rlhf_spm_eos_id(const rlhf_spm* sp) { return sp->processor.eos_id(); }
RLHF_SPM_EXPORT int rlhf_spm_pad_id(const rlhf_spm* sp) { return sp->processor.pad_id(); }
RLHF_SPM_EXPORT int rlhf_spm_unk_id(const rlhf_spm* sp) { return sp->processor.unk_id(); }

RLHF_SPM_EXPORT float rlhf_spm_score(const rlhf_spm* sp, int id) {
  if (id < 0 || id >= sp->processor.GetPieceSize()) return 0.0f;
  return sp->processor.GetScore(id);
}

namespace {

// Feeds the trainer the lines of a file, so the model does not record the input path.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const char* path) : in_(path) {
    if (!in_)
      status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                            std::string("cannot open ") + path);
    Next();
  }
  bool done() const override { return done_; }
  void Next() override {
    if (!status_.ok() || !std::getline(in_, line_)) {
      done_ = true;
      return;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

}  // namespace

RLHF_SPM_EXPORT long rlhf_spm_train(const char* input_path, const char* const* keys,
                                    const char* const* values, size_t n, unsigned int seed,
                                    char** out_model) {
  try {
    std::unordered_map<std::string, std::string> kwargs;
    for (size_t i = 0; i < n; ++i) kwargs[keys[i]] = values[i];
    LineIterator lines(input_path ? input_path : "");
    if (!lines.status().ok()) {
      set_error(lines.status().ToString());
      return -1;
    }
    sentencepiece::SetRandomGeneratorSeed(seed);
    std::string model;
    const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &lines, &model);
    if (!status.ok()) {
      set_error(status.ToString());
      return -1;
    }
    *out_model = static_cast<char*>(std::malloc(model.size() ? model.size() : 1));
    if (!*out_model) {
      set_error("out of memory");
      return -1;
    }
    std::memcpy(*out_model, model.data(), model.size());
    return static_cast<long>(model.size());
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown exception in SentencePiece training");
  }
  return -1;
}

RLHF_SPM_EXPORT void rlhf_spm_free_buffer(char* buffer) { std::free(buffer); }
