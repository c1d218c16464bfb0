#include "pipelines/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/blas_tuning.h"
#include "common/error.h"
#include "common/files.h"
#include "common/launch.h"
#include "common/manifest.h"
#include "common/text_config.h"
#include "pipelines/internal/run.h"
#include "pipelines/internal/subprocess.h"
#include "pipelines/pipeline_config.h"
#include "pipelines/policy_sampling.h"
#include "pipelines/quickstart_task.h"
#include "pipelines/report.h"
#include "pipelines/stage_record.h"
#include "policy/model/checkpoint.h"
#include "policy/runtime/device.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/sft_config.h"

namespace rlhf::pipelines {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

template <typename T>
void set_default(T* field_value, T def) {
  if (*field_value == T{}) *field_value = def;
}

std::vector<quickstart::Problem> train_problems(const Run& run, int n, uint64_t salt) {
  return quickstart::generate_problems(quickstart::Split::kTrain, n, run.config.seed() + salt,
                                       run.config.quickstart().max_operand());
}

// ---- stages -----------------------------------------------------------------------------------

// tokenizer: the quickstart's generated data (SFT corpus, prompts) and the SentencePiece model.
json stage_tokenizer(Run& run) {
  const auto& qs = run.config.quickstart();
  std::string data = run.path("data");
  make_dirs(data);
  quickstart::write_sft_corpus(data + "/sft.jsonl", qs.sft_examples(), run.config.seed(),
                               sft_mix_from_config(qs, run.config_path), qs.max_operand());
  quickstart::write_tokenizer_corpus(data + "/tokenizer_corpus.txt", qs.tokenizer_problems(),
                                     run.config.seed(), qs.max_operand());
  quickstart::write_prompts(data + "/ppo_prompts.jsonl", train_problems(run, qs.ppo_prompts(), 7));
  quickstart::write_prompts(data + "/heldout_prompts.jsonl", heldout_problems(run));
  run_or_throw({run.exe, "tokenizer", "train", "--input", data + "/tokenizer_corpus.txt",
                "--vocab-size", std::to_string(run.config.tokenizer().vocab_size()), "--out",
                run.path("tokenizer"), "--seed", std::to_string(run.config.seed())},
               "tokenizer");
  auto tok = policy::Tokenizer::load(run.tokenizer_model());
  return {{"vocab_size", tok.vocab_size()}};
}

json stage_sft(Run& run) {
  proto::SftConfig cfg = run.config.sft();
  cfg.set_train_file(run.path("data/sft.jsonl"));
  cfg.set_tokenizer(run.tokenizer_model());
  cfg.set_seed(run.config.seed());
  std::string dir = run.path("sft");
  make_dirs(dir);
  write_file_atomic(dir + "/sft.pbtxt", to_text_format(cfg));
  run_or_throw(trainer_argv(run.exe, run.config.processes().sft(),
                            {"sft", "--config", dir + "/sft.pbtxt", "--out", dir}),
               "sft");
  return {};
}

// Loads the SFT policy and checks it belongs to this run's tokenizer.
policy::LoadedModel load_sft(const Run& run, const policy::Tokenizer& tok) {
  auto loaded = policy::load_checkpoint(run.path("sft/model"));
  if (!loaded.info.tokenizer_sha256.empty() && loaded.info.tokenizer_sha256 != tok.sha256())
    throw Error(run.path("sft/model") + ": trained with tokenizer " +
                loaded.info.tokenizer_sha256.substr(0, 12) + " but the run's tokenizer is " +
                tok.sha256().substr(0, 12) + " (rerun from the sft stage)");
  if (loaded.model->config().vocab_size != tok.vocab_size())
    throw Error(run.path("sft/model") + ": vocab_size " +
                std::to_string(loaded.model->config().vocab_size) + " but the tokenizer has " +
                std::to_string(tok.vocab_size()));
  return loaded;
}

// sample: K answers per train prompt from the SFT policy into the annotation DB, the SFT gold
// accuracy on held-out problems, and gold-ranked held-out pairs for checking the reward model.
json stage_sample(Run& run) {
  const auto& sc = run.config.sample();
  auto tok = policy::Tokenizer::load(run.tokenizer_model());
  auto loaded = load_sft(run, tok);
  auto& model = loaded.model;
  model->to(policy::resolve_device(sc.device(), "sample: device"));
  model->eval();
  std::string dir = run.path("sample");
  make_dirs(dir);

  policy::SamplingOptions so;
  so.precision = policy::parse_precision(sc.dtype(), "sample: dtype");
  so.temperature = sc.temperature();
  so.top_p = sc.top_p();
  so.max_new_tokens = sc.max_new_tokens();
  so.seed = run.config.seed() + 11;

  // Annotation tasks from train prompts.
  auto problems = train_problems(run, run.config.quickstart().sample_prompts(), 3);
  std::vector<std::string> prompts;
  for (const auto& p : problems) prompts.push_back(p.prompt());
  auto answers = sample_answers(model, tok, prompts, sc.answers_per_prompt(), so, sc.batch_size());
  quickstart::write_annotation_tasks(dir + "/tasks.jsonl", prompts, answers);

  // Held-out: gold accuracy (greedy) and gold-ranked sampled pairs.
  auto held = heldout_problems(run);
  auto gold = evaluate_gold(model, tok, held, sc.max_new_tokens(), sc.batch_size(), so.precision);
  std::vector<std::string> held_prompts = gold.prompts;
  so.seed = run.config.seed() + 12;
  auto held_answers =
      sample_answers(model, tok, held_prompts, sc.answers_per_prompt(), so, sc.batch_size());
  std::ofstream pairs(dir + "/heldout_pairs.jsonl.tmp");
  int64_t n_pairs = 0;
  for (size_t i = 0; i < held.size(); ++i) {
    auto groups = quickstart::gold_ranking(held[i], held_answers[i]);
    for (size_t g = 0; g < groups.size(); ++g)
      for (size_t h = g + 1; h < groups.size(); ++h)
        for (int a : groups[g])
          for (int b : groups[h]) {
            if (held_answers[i][a] == held_answers[i][b]) continue;
            pairs << json{{"schema_version", 1},
                          {"prompt", held_prompts[i]},
                          {"chosen", held_answers[i][a]},
                          {"rejected", held_answers[i][b]},
                          {"task_id", static_cast<int64_t>(i)}}
                         .dump()
                  << "\n";
            ++n_pairs;
          }
  }
  pairs.close();
  rename_atomic(dir + "/heldout_pairs.jsonl.tmp", dir + "/heldout_pairs.jsonl");

  json before = json::array();
  for (size_t i = 0; i < gold.prompts.size(); ++i)
    before.push_back({{"prompt", gold.prompts[i]},
                      {"gold", gold.golds[i]},
                      {"answer", gold.answers[i]},
                      {"correct", static_cast<bool>(gold.correct[i])}});
  write_file_atomic(dir + "/heldout_sft.json", before.dump(1));

  // Load the tasks into the annotation DB (a fresh one: the stage owns it).
  std::string db = run.path("annotation.db");
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(db + suffix);
  run_or_throw({run.exe, "annotate", "add-tasks", "--db", db, "--input", dir + "/tasks.jsonl",
                "--overlap", std::to_string(run.config.annotate().overlap())},
               "sample");
  std::printf("sample: SFT gold accuracy on %zu held-out problems: %.1f%%\n", held.size(),
              100.0 * gold.accuracy);
  return {{"sft_gold_accuracy", gold.accuracy},
          {"tasks", static_cast<int64_t>(prompts.size())},
          {"heldout_pairs", n_pairs}};
}

std::string last_line(const std::string& text) {
  std::string s = text;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  auto nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

// JSON printed by a command: the whole output, or else its last line (commands print a JSON
// object either on its own or as the last line after progress text).
json parse_json_output(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_discarded()) return j;
  j = json::parse(last_line(text), nullptr, false);
  if (j.is_discarded()) throw Error(what + ": expected JSON output, got: " + last_line(text));
  return j;
}

// Waits up to 10 s for the annotation server to create its socket.
void wait_for_socket(BackgroundChild& server, const std::string& sock, const std::string& dir) {
  for (int i = 0; i < 200 && !file_exists(sock); ++i) {
    if (!server.running())
      throw Error("annotate: the server exited at start (see " + dir + "/server.log)");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!file_exists(sock)) throw Error("annotate: the server did not create " + sock);
}

// People annotate: prints how to connect (with a first token in a private file) and polls the
// stats until no task is pending.
void wait_for_people(const Run& run, const std::string& dir, const std::string& db,
                     const std::string& sock) {
  std::string token =
      last_line(run_child_capture({run.exe, "annotate", "add-annotator", "--db", db, "--name",
                                   "annotator-" + std::to_string(::getpid())}));
  // Through a file only this user can read: a --token argument is visible in `ps`.
  const std::string token_file = dir + "/annotator-" + std::to_string(::getpid()) + ".token";
  write_private_file(token_file, token + "\n");
  std::printf(
      "annotate: waiting for people. Annotators connect with\n"
      "  rlhf annotate client --socket %s --token-file FILE\n"
      "where FILE holds their token on its first line, readable only by them (new tokens: rlhf "
      "annotate add-annotator --db %s --name NAME). A first token is in %s\n",
      sock.c_str(), db.c_str(), token_file.c_str());
  while (true) {
    json stats = parse_json_output(
        run_child_capture({run.exe, "annotate", "stats", "--db", db, "--json"}), "annotate stats");
    int64_t pending = stats.value("pending_tasks", int64_t{0});
    std::fprintf(stderr, "\rannotate: %lld tasks done, %lld pending   ",
                 static_cast<long long>(stats.value("done_tasks", int64_t{0})),
                 static_cast<long long>(pending));
    if (pending == 0) break;
    for (int i = 0; i < 50; ++i) {
      throw_if_stopped();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  std::fprintf(stderr, "\n");
}

// Simulated annotators: one `rlhf annotate simulate` child per annotator, each with its own
// token; waits for all of them and throws if one failed.
void run_simulated_annotators(const Run& run, const std::string& dir, const std::string& db,
                              const std::string& sock) {
  const auto& ac = run.config.annotate();
  std::vector<std::unique_ptr<BackgroundChild>> clients;
  for (int i = 0; i < ac.annotators(); ++i) {
    std::string name =
        "sim-" + ac.teacher() + "-" + std::to_string(i) + "-" + std::to_string(::getpid());
    std::string token = last_line(
        run_child_capture({run.exe, "annotate", "add-annotator", "--db", db, "--name", name}));
    // Through a file only this user can read: a --token argument is visible in `ps`.
    const std::string token_file = dir + "/" + name + ".token";
    write_private_file(token_file, token + "\n");
    clients.push_back(std::make_unique<BackgroundChild>(
        std::vector<std::string>{run.exe, "annotate", "simulate", "--socket", sock, "--token-file",
                                 token_file, "--teacher", ac.teacher(), "--noise",
                                 std::to_string(ac.noise()), "--seed",
                                 std::to_string(run.config.seed() + i)},
        dir + "/simulate-" + std::to_string(i) + ".log"));
  }
  for (auto& c : clients) {
    while (c->running()) {
      throw_if_stopped();  // the destructors stop the annotators
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (c->stop() != 0)
      throw Error("annotate: a simulated annotator failed (see " + dir + "/simulate-*.log)");
  }
}

// Exports pairs and rankings, writes stats.json, and returns the stage's figures; throws if no
// comparison came out.
json export_annotations(const Run& run, const std::string& dir, const std::string& db) {
  run_or_throw({run.exe, "annotate", "export", "--db", db, "--format", "pairs", "--output",
                dir + "/pairs.jsonl"},
               "annotate");
  run_or_throw({run.exe, "annotate", "export", "--db", db, "--format", "rankings", "--output",
                dir + "/rankings.jsonl"},
               "annotate");
  json stats = parse_json_output(
      run_child_capture({run.exe, "annotate", "stats", "--db", db, "--json"}), "annotate stats");
  write_file_atomic(dir + "/stats.json", stats.dump(2));
  int64_t pairs = 0;
  {
    std::ifstream in(dir + "/pairs.jsonl");
    std::string line;
    while (std::getline(in, line)) pairs += line.empty() ? 0 : 1;
  }
  if (pairs == 0) throw Error("annotate: no comparisons came out of the rankings (" + dir + ")");
  return {{"pairs", pairs}, {"annotation_done_tasks", stats.value("done_tasks", 0)}};
}

// annotate: the annotation server on a socket in the run folder, with simulated annotators as
// clients over that socket (or people: print how to connect and wait until all tasks are ranked).
json stage_annotate(Run& run) {
  std::string dir = run.path("annotate");
  make_dirs(dir);
  std::string db = run.path("annotation.db");
  std::string sock = dir + "/annotate.sock";
  fs::remove(sock);  // a socket left by an interrupted attempt: wait for the new server's own
  BackgroundChild server({run.exe, "annotate", "serve", "--db", db, "--socket", sock},
                         dir + "/server.log");
  wait_for_socket(server, sock, dir);
  if (run.config.annotate().mode() == "people")
    wait_for_people(run, dir, db, sock);
  else
    run_simulated_annotators(run, dir, db, sock);
  server.stop();
  return export_annotations(run, dir, db);
}

json stage_reward(Run& run) {
  proto::RewardTrainConfig cfg = run.config.reward();
  cfg.set_train_file(run.path("annotate/pairs.jsonl"));
  cfg.set_format("pairs");
  cfg.set_init_from(run.path("sft/model"));
  cfg.set_tokenizer(run.tokenizer_model());
  cfg.set_seed(run.config.seed());
  if (run.config.threads() > 0) cfg.set_threads(run.config.threads());
  std::string dir = run.path("reward");
  make_dirs(dir);
  write_file_atomic(dir + "/reward.pbtxt", to_text_format(cfg));
  run_or_throw(trainer_argv(run.exe, run.config.processes().reward(),
                            {"reward", "train", "--config", dir + "/reward.pbtxt", "--out", dir}),
               "reward");
  // Agreement with the gold teacher on held-out answer pairs the reward model never saw.
  std::string out = run_child_capture({run.exe, "reward", "eval", "--model", dir, "--pairs",
                                       run.path("sample/heldout_pairs.jsonl"), "--json"});
  json eval = parse_json_output(out, "reward eval");
  write_file_atomic(dir + "/gold_agreement.json", eval.dump(2));
  std::printf("reward: agreement with the gold teacher on %lld held-out pairs: %.1f%%\n",
              static_cast<long long>(eval.value("n", int64_t{0})),
              100.0 * eval.value("accuracy", 0.0));
  json r = {{"reward_gold_agreement", eval.value("accuracy", 0.0)}};
  if (auto m = read_manifest(dir)) {
    auto it = m->metrics().find("heldout_accuracy");
    if (it != m->metrics().end()) r["reward_heldout_accuracy"] = it->second;
  }
  return r;
}

json stage_ppo(Run& run) {
  std::string dir = run.path("ppo");
  make_dirs(dir);
  const proto::PpoConfig cfg = wire_ppo_config(run, run.config.ppo(), 0, dir);
  write_file_atomic(dir + "/ppo.pbtxt", to_text_format(cfg));
  std::vector<std::string> command = {"ppo", "--config", dir + "/ppo.pbtxt", "--out", dir};
  if (run.config.task() == "quickstart")
    command.insert(command.end(), {"--gold-task", "quickstart", "--gold-prompts",
                                   run.path("data/heldout_prompts.jsonl")});
  run_or_throw(trainer_argv(run.exe, run.config.processes().ppo(), command), "ppo");

  // Final gold accuracy of the PPO policy on the same held-out problems as the SFT number.
  auto tok = policy::Tokenizer::load(run.tokenizer_model());
  auto loaded = policy::load_checkpoint(dir + "/model");
  const auto& sc = run.config.sample();
  loaded.model->to(policy::resolve_device(sc.device(), "sample: device"));
  loaded.model->eval();
  auto held = heldout_problems(run);
  auto gold = evaluate_gold(loaded.model, tok, held, sc.max_new_tokens(), sc.batch_size(),
                            policy::parse_precision(sc.dtype(), "sample: dtype"));
  json after = json::array();
  for (size_t i = 0; i < gold.prompts.size(); ++i)
    after.push_back({{"prompt", gold.prompts[i]},
                     {"gold", gold.golds[i]},
                     {"answer", gold.answers[i]},
                     {"correct", static_cast<bool>(gold.correct[i])}});
  write_file_atomic(dir + "/heldout_ppo.json", after.dump(1));
  std::printf("ppo: gold accuracy on %zu held-out problems: %.1f%%\n", held.size(),
              100.0 * gold.accuracy);
  json r = {{"ppo_gold_accuracy", gold.accuracy}};
  // Final KL from the last metrics line.
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  if (!last.empty()) {
    json m = json::parse(last, nullptr, false);
    if (m.is_object() && m.contains("kl/mean") && m["kl/mean"].is_number())
      r["ppo_final_kl"] = m["kl/mean"];
  }
  return r;
}

// ---- the stage table ----------------------------------------------------------------------------

// One row per stage, in execution order. `inputs` are the files whose content decides the stage's
// outputs and `config` the config text: together they are the stage's fingerprint (a rerun skips a
// finished stage whose fingerprint is unchanged). Stages whose command records itself (the
// trainers: their manifest lists every input and output) have own_manifest; the pipeline records
// the others when they finish.
struct Stage {
  std::string name;
  std::string folder;  // in the run folder
  std::function<std::vector<std::string>(const Run&)> inputs;
  std::function<std::string(const proto::PipelineConfig&)> config;
  std::function<json(Run&)> run;
  bool own_manifest = false;
};

std::string common_config(const proto::PipelineConfig& c) {
  return "seed " + std::to_string(c.seed()) + " task " + c.task() + "\n";
}

const std::vector<Stage>& stage_table() {
  using C = proto::PipelineConfig;
  static const std::vector<Stage> table = {
      {"tokenizer", "tokenizer", [](const Run&) { return std::vector<std::string>{}; },
       [](const C& c) {
         return common_config(c) + to_text_format(c.quickstart()) + to_text_format(c.tokenizer());
       },
       stage_tokenizer},
      {"sft", "sft",
       [](const Run& r) {
         return std::vector<std::string>{r.path("data/sft.jsonl"), r.tokenizer_model()};
       },
       [](const C& c) { return common_config(c) + to_text_format(c.sft()); }, stage_sft, true},
      {"sample", "sample",
       [](const Run& r) {
         return std::vector<std::string>{r.path("sft/model/model.safetensors"),
                                         r.tokenizer_model()};
       },
       [](const C& c) {
         return common_config(c) + to_text_format(c.sample()) + to_text_format(c.quickstart());
       },
       stage_sample},
      {"annotate", "annotate",
       [](const Run& r) { return std::vector<std::string>{r.path("sample/tasks.jsonl")}; },
       [](const C& c) { return common_config(c) + to_text_format(c.annotate()); }, stage_annotate},
      {"reward", "reward",
       [](const Run& r) {
         return std::vector<std::string>{r.path("annotate/pairs.jsonl"),
                                         r.path("sft/model/model.safetensors"),
                                         r.path("sample/heldout_pairs.jsonl")};
       },
       [](const C& c) { return common_config(c) + to_text_format(c.reward()); }, stage_reward,
       true},
      {"ppo", "ppo",
       [](const Run& r) {
         return std::vector<std::string>{r.path("sft/model/model.safetensors"),
                                         r.path("reward/model/model.safetensors"),
                                         r.path("data/ppo_prompts.jsonl")};
       },
       [](const C& c) { return common_config(c) + to_text_format(c.ppo()); }, stage_ppo, true},
      {"report", "", nullptr, nullptr, nullptr},
  };
  return table;
}

void write_summary(Run& run, double wall_seconds) {
  json summary;
  json stages = json::object();
  for (const auto& stage : stage_table()) {
    const std::string& name = stage.name;
    if (!run.state["stages"].contains(name)) continue;
    const auto& s = run.state["stages"][name];
    stages[name + "_seconds"] = s.value("seconds", 0.0);
    if (s.contains("metrics"))
      for (auto& [k, v] : s["metrics"].items())
        if (v.is_number()) summary[k] = v;
  }
  summary["stage_seconds"] = stages;
  double total = 0;
  for (auto& [k, v] : stages.items()) total += v.get<double>();
  summary["wall_seconds"] = total;
  summary["this_invocation_seconds"] = wall_seconds;
  if (summary.contains("sft_gold_accuracy") && summary.contains("ppo_gold_accuracy")) {
    double sft = summary["sft_gold_accuracy"].get<double>();
    summary["ppo_over_sft"] = sft > 0 ? summary["ppo_gold_accuracy"].get<double>() / sft : 0.0;
  }
  summary["run_dir"] = run.dir;
  summary["seed"] = run.config.seed();
  // Where the figures came from: learning results differ by float rounding between machines.
  const std::string blas = openblas_core_name();
  summary["machine"] = {{"cpu", cpu_model_name()},
                        {"cores", static_cast<int64_t>(std::thread::hardware_concurrency())},
                        {"openblas_core", blas.empty() ? "none" : blas}};
  summary["finished_at"] = utc_now_iso8601();
  summary["schema_version"] = 1;
  write_file_atomic(run.path("summary.json"), summary.dump(2));
}

// The finished-stage record of a stage run in-process (the trainers record themselves).
void record_stage(const Run& run, const Stage& stage, const json& metrics, double seconds) {
  auto m = begin_manifest(stage.name);
  for (const auto& f : stage.inputs(run))
    if (file_exists(f)) *m.add_inputs() = file_ref(f);
  m.set_resolved_config(stage.config(run.config));
  for (auto& [k, v] : metrics.items())
    if (v.is_number()) (*m.mutable_metrics())[k] = v.get<double>();
  finish_stage(m, run.path(stage.folder), seconds);
}

// Runs one stage unless it is finished with the same fingerprint (and not forced).
void run_stage(Run& run, const Stage& stage, bool forced) {
  const std::string fp = hash_inputs(stage.config(run.config), stage.inputs(run), run.dir);
  // Folders recorded before fingerprints were relative to the run folder are still recognised.
  const std::string legacy_fp = hash_inputs(stage.config(run.config), stage.inputs(run));
  auto& entry = run.state["stages"][stage.name];
  if (!entry.is_object()) entry = json::object();
  auto same = [&](const char* key) {
    const std::string recorded = entry.value(key, "");
    return recorded == fp || recorded == legacy_fp;
  };
  const std::string dir = run.path(stage.folder);
  auto manifest = read_manifest(dir);
  const bool done = manifest && manifest->complete() && same("fingerprint");
  if (done && !forced) {
    std::printf("== %s: unchanged, skipped\n", stage.name.c_str());
    return;
  }
  std::printf("== %s\n", stage.name.c_str());
  std::fflush(stdout);
  // An interrupted attempt with the same inputs resumes from what it left (the trainers continue
  // from their last checkpoint by the rule of policy/training/training.h); new inputs or --force
  // start the stage afresh, so a stale checkpoint can never be resumed against other data.
  const bool resume = !forced && same("attempt_fingerprint") && !done;
  if (!resume && stage.name != "tokenizer") {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  entry["fingerprint"] = "";
  entry["attempt_fingerprint"] = fp;
  entry["complete"] = false;
  run.save_state();
  const double t = now_s();
  json metrics;
  try {
    metrics = stage.run(run);
  } catch (...) {
    // After a stop signal, whatever failed (a child it ended, e.g. an annotator) failed by it.
    if (stop_signal() != 0) {
      try {
        throw_if_stopped();
      } catch (...) {
        rethrow_with_context("pipeline stage '" + stage.name + "'");
      }
    }
    rethrow_with_context("pipeline stage '" + stage.name + "'");
  }
  const double secs = now_s() - t;
  if (!stage.own_manifest) record_stage(run, stage, metrics, secs);
  entry["fingerprint"] = fp;
  entry["complete"] = true;
  entry["seconds"] = secs;
  entry["metrics"] = metrics;
  run.save_state();
  std::printf("== %s done in %.1f s\n", stage.name.c_str(), secs);
}

}  // namespace

const std::vector<std::string>& stage_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& s : stage_table()) n.push_back(s.name);
    return n;
  }();
  return names;
}

std::string run_pipeline(const RunOptions& options) {
  const double t0 = now_s();
  const auto& names = stage_names();
  for (const auto* s : {&options.from_stage, &options.only_stage, &options.last_stage}) {
    if (s->empty() || std::find(names.begin(), names.end(), *s) != names.end()) continue;
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("unknown stage '" + *s + "' (stages: " + list + ")");
  }
  // SIGTERM / SIGINT are passed on to the stage and server children, which get the stop timeout to
  // end; then the pipeline exits 128 + signal, and a rerun resumes
  // (pipelines/internal/subprocess.h).
  const StopOnSignals stop_on_signals(options.stop_timeout_s);
  Run run = open_run(options);
  bool started = options.from_stage.empty();
  bool stopped_at_last = false;  // the stage named last_stage ran (or was skipped as finished)
  for (const auto& stage : stage_table()) {
    throw_if_stopped();
    if (!started && stage.name == options.from_stage) started = true;
    if (!options.only_stage.empty() && stage.name != options.only_stage) continue;
    if (options.only_stage.empty() && !started) continue;
    if (stopped_at_last) break;
    if (!stage.run) {  // report
      write_summary(run, now_s() - t0);
      report::write_report(run.dir);
      std::printf("report: %s\n", run.path("report.html").c_str());
      continue;
    }
    run_stage(
        run, stage,
        options.force || stage.name == options.from_stage || stage.name == options.only_stage);
    stopped_at_last = stage.name == options.last_stage;
  }
  if (stopped_at_last) return run.dir;
  if (options.only_stage.empty() || options.only_stage == "report")
    write_summary(run, now_s() - t0);
  return run.dir;
}

}  // namespace rlhf::pipelines
