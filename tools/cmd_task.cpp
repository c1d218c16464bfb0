// `rlhf task arithmetic`: writes the built-in quickstart task's files (SFT corpus with its
// systematic misconception, tokenizer corpus, train and held-out prompts).
//
// This file also registers the quickstart gold teacher ("arithmetic") in the annotation teacher
// registry at start-up: tools/cmd_*.cpp are compiled straight into the `rlhf` executable, so this
// static initialiser always runs, and it references pipelines/quickstart_task.cpp, so the linker
// keeps that object from the static library. `rlhf annotate simulate --teacher arithmetic` works
// without the annotation module knowing about pipelines/.
#include <cstdio>
#include <string>

#include "common/error.h"
#include "common/files.h"
#include "pipelines/quickstart_task.h"
#include "tools/cli.h"

namespace {

const bool kTeachersRegistered = (rlhf::quickstart::register_quickstart_teachers(), true);

int run_task(const rlhf::cli::Args& a) {
  namespace q = rlhf::quickstart;
  const std::string out = a.get("out");
  const uint64_t seed = static_cast<uint64_t>(a.get_int("seed"));
  const int64_t sft = a.get_int("sft-examples"), train = a.get_int("train-prompts"),
                held = a.get_int("heldout-prompts"), tok = a.get_int("tokenizer-problems");
  for (auto [name, v] : {std::pair<const char*, int64_t>{"sft-examples", sft},
                         {"train-prompts", train},
                         {"heldout-prompts", held},
                         {"tokenizer-problems", tok}})
    if (v < 0 || v > 10000000)
      throw rlhf::UsageError(std::string("--") + name + " must be between 0 and 10000000, got " +
                             std::to_string(v));
  const int64_t max_operand = a.get_int("max-operand");
  if (max_operand < q::kMinOperandLimit || max_operand > q::kMaxOperandLimit)
    throw rlhf::UsageError("--max-operand must be between " + std::to_string(q::kMinOperandLimit) +
                           " and " + std::to_string(q::kMaxOperandLimit) + ", got " +
                           std::to_string(max_operand));
  const int m = static_cast<int>(max_operand);
  rlhf::make_dirs(out);
  q::write_sft_corpus(out + "/sft.jsonl", static_cast<int>(sft), seed, {}, m);
  q::write_tokenizer_corpus(out + "/tokenizer_corpus.txt", static_cast<int>(tok), seed, m);
  q::write_prompts(out + "/train_prompts.jsonl",
                   q::generate_problems(q::Split::kTrain, static_cast<int>(train), seed + 1, m));
  q::write_prompts(out + "/heldout_prompts.jsonl",
                   q::generate_problems(q::Split::kHeldOut, static_cast<int>(held), seed, m));
  std::printf(
      "wrote %s/{sft.jsonl,tokenizer_corpus.txt,train_prompts.jsonl,heldout_prompts.jsonl}\n",
      out.c_str());
  return 0;
}

rlhf::cli::Register reg({"task arithmetic",
                         "write the quickstart arithmetic task's data (imperfect SFT corpus, "
                         "tokenizer corpus, train/held-out prompts)",
                         "--out DIR [--seed S] [--sft-examples N] [--heldout-prompts N]",
                         {{"out", "output folder", "", false, true},
                          {"seed", "random seed (same seed, same files)", "1"},
                          {"sft-examples", "lines of sft.jsonl ({prompt, response})", "20000"},
                          {"train-prompts", "lines of train_prompts.jsonl ({prompt})", "2000"},
                          {"heldout-prompts", "lines of heldout_prompts.jsonl ({prompt})", "200"},
                          {"tokenizer-problems", "problems in tokenizer_corpus.txt", "5000"},
                          {"max-operand", "operands are drawn from 1..N (3..40)", "20"}},
                         run_task});

}  // namespace
