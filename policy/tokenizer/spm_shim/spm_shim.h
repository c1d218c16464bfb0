// librlhf_spm.so: SentencePiece behind a plain C API with no protobuf types.
//
// Why a separate shared library: Debian's libsentencepiece.so embeds and exports protobuf 3.14,
// while libtorch and our own messages use the system protobuf 3.21. Linked into one process,
// SentencePiece's Load() aborts on protobuf's version check. policy/tokenizer/tokenizer.cpp opens
// this library with dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND), so SentencePiece and its
// protobuf resolve against each other and never against the process's protobuf.
//
// Conventions: functions never throw. On failure they return NULL / a negative value and set a
// thread-local message readable with rlhf_spm_last_error(). Functions that fill a caller buffer
// return the number of elements needed; when that exceeds `cap` nothing useful was written and
// the caller retries with a larger buffer.
//
// Ownership: rlhf_spm_load returns a handle the caller frees with rlhf_spm_free; rlhf_spm_train's
// model buffer is freed with rlhf_spm_free_buffer. Thread safety: the error message is per thread;
// rlhf_spm_train seeds SentencePiece's process-wide random generator (one training at a time).
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RLHF_SPM_API_VERSION 1

typedef struct rlhf_spm rlhf_spm;

// API version of the loaded library (RLHF_SPM_API_VERSION).
int rlhf_spm_api_version(void);
// Message of the last failure on this thread ("" when none).
const char* rlhf_spm_last_error(void);

// Loads a SentencePiece .model file; NULL on failure.
rlhf_spm* rlhf_spm_load(const char* model_path);
void rlhf_spm_free(rlhf_spm* sp);

// Encodes UTF-8 text (no BOS/EOS). Returns the number of ids, or -1 on error.
long rlhf_spm_encode(const rlhf_spm* sp, const char* text, size_t text_len, int* out, size_t cap);
// Decodes ids into UTF-8 text (control ids such as BOS/EOS/pad produce nothing). Returns the
// number of bytes (no terminating NUL written), or -1 on error (e.g. an id out of range).
long rlhf_spm_decode(const rlhf_spm* sp, const int* ids, size_t n, char* out, size_t cap);
// The piece string of one id. Returns its length in bytes, or -1 when the id is out of range.
long rlhf_spm_id_to_piece(const rlhf_spm* sp, int id, char* out, size_t cap);

int rlhf_spm_vocab_size(const rlhf_spm* sp);
int rlhf_spm_bos_id(const rlhf_spm* sp);  // -1 when the model has none
int rlhf_spm_eos_id(const rlhf_spm* sp);
int rlhf_spm_pad_id(const rlhf_spm* sp);
int rlhf_spm_unk_id(const rlhf_spm* sp);

float rlhf_spm_score(const rlhf_spm* sp, int id);  // the piece's score (0 when out of range)

// Trains a model on the lines of the UTF-8 text file `input_path` (one sentence per line),
// with SentencePiece trainer flags given as n key/value pairs (spm_train's flag names without
// dashes: "vocab_size", "model_type", ...; values may contain spaces; no "input" or
// "model_prefix": the model is returned, not written), after seeding SentencePiece's random
// generator with `seed`. On success returns the serialized model's size and sets *out_model to a
// buffer the caller releases with rlhf_spm_free_buffer(); on error returns -1.
// The model does not embed the input path, so the same text + flags + seed give the same bytes.
long rlhf_spm_train(const char* input_path, const char* const* keys, const char* const* values,
                    size_t n, unsigned int seed, char** out_model);
void rlhf_spm_free_buffer(char* buffer);

#ifdef __cplusplus
}
#endif
