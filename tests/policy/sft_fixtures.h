// Shared fixtures of the SFT and LoRA suites: a tiny trained tokenizer and a synthetic,
// learnable prompt/response corpus (deterministic).
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "policy/tokenizer/tokenizer.h"
#include "tests/test_support.h"

namespace rlhf::testing {

// "what is A plus B ?" -> "A + B = C" style pairs: the response is a function of the prompt.
inline void write_sft_jsonl(const std::string& path, int n, uint32_t seed = 1) {
  const char* names[] = {"zero", "one", "two",   "three", "four",
                         "five", "six", "seven", "eight", "nine"};
  std::ofstream out(path);
  uint32_t s = seed;
  for (int i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    const int a = (s >> 8) % 5, b = (s >> 16) % 5;
    out << "{\"prompt\": \"what is " << names[a] << " plus " << names[b] << "?\", \"response\": \""
        << names[a] << " plus " << names[b] << " is " << names[a + b] << ".\"}\n";
  }
}

inline void write_text_corpus(const std::string& path, int n) {
  const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park"};
  std::ofstream out(path);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < 6; ++j) out << (j ? " " : "") << words[(i * 7 + j * 3) % 10];
    out << ".\n";
  }
}

// Trains (once per process) a 300-piece tokenizer on the SFT corpus' vocabulary.
inline std::string tiny_tokenizer(const TempDir& dir) {
  const std::string corpus = dir / "tok_corpus.jsonl";
  write_sft_jsonl(corpus, 400, 99);
  policy::TokenizerTrainOptions o;
  o.input = corpus;
  o.vocab_size = 300;
  o.out_dir = dir / "tok";
  return policy::train_tokenizer(o);
}

}  // namespace rlhf::testing
