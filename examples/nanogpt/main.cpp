// nanogpt: train, evaluate and sample a character-level GPT with veil (see README.md).
//   nanogpt train  --data FILE|DIR [--documents SEP] [nanoGPT's flags...] --out DIR
//   nanogpt sample --checkpoint DIR/ckpt.safetensors --prompt TEXT
//   nanogpt eval   --checkpoint FILE --data TEXT [--windows N]
#include <CLI/CLI.hpp>

#include <iostream>

#include "train.hpp"

int main(int argc, char** argv) {
  CLI::App app{"nanogpt: a character-level GPT trained with veil"};
  app.require_subcommand(1);

  nanogpt::TrainOptions train;
  std::string documents;
  auto* train_command = app.add_subcommand("train", "train a model on a UTF-8 text file (or a directory of them)");
  train_command->add_option("--data", train.data, "text file, or directory whose files are concatenated")->required();
  train_command->add_option("--documents", documents,
                            "pack whole documents per row; documents are separated by lines holding SEP (e.g. %)");
  train_command->add_option("--out", train.out, "output folder")->capture_default_str();
  train_command->add_option("--n-layer", train.model.n_layer)->capture_default_str();
  train_command->add_option("--n-head", train.model.n_head)->capture_default_str();
  train_command->add_option("--n-embd", train.model.n_embd)->capture_default_str();
  train_command->add_option("--block-size", train.model.block_size)->capture_default_str();
  train_command->add_option("--dropout", train.model.dropout)->capture_default_str();
  train_command->add_option("--bias", train.model.bias, "biases in Linear and LayerNorm")->capture_default_str();
  train_command->add_option("--batch-size", train.batch_size)->capture_default_str();
  train_command->add_option("--max-iters", train.max_iters)->capture_default_str();
  train_command->add_option("--max-seconds", train.max_seconds, "stop training after this long (0: no limit)")
      ->capture_default_str();
  train_command->add_option("--lr", train.lr)->capture_default_str();
  train_command->add_option("--min-lr", train.min_lr)->capture_default_str();
  train_command->add_option("--warmup-iters", train.warmup_iters)->capture_default_str();
  train_command->add_option("--lr-decay-iters", train.lr_decay_iters)->capture_default_str();
  train_command->add_option("--weight-decay", train.weight_decay)->capture_default_str();
  train_command->add_option("--beta1", train.beta1)->capture_default_str();
  train_command->add_option("--beta2", train.beta2)->capture_default_str();
  train_command->add_option("--grad-clip", train.grad_clip, "0 disables clipping")->capture_default_str();
  train_command->add_option("--eval-interval", train.eval_interval)->capture_default_str();
  train_command->add_option("--eval-iters", train.eval_iters)->capture_default_str();
  train_command->add_option("--log-interval", train.log_interval)->capture_default_str();
  train_command->add_option("--seed", train.seed)->capture_default_str();
  train_command->add_option("--threads", train.threads, "0: all cores")->capture_default_str();
  train_command->add_flag("--resume", train.resume, "continue from OUT/last.safetensors");

  std::string checkpoint, prompt = "\n";
  nanogpt::SampleOptions sample;
  bool no_kv_cache = false;
  auto* sample_command = app.add_subcommand("sample", "generate text from a checkpoint");
  sample_command->add_option("--checkpoint", checkpoint)->required();
  sample_command->add_option("--prompt", sample.prompt)->capture_default_str();
  sample_command->add_option("--max-new-tokens", sample.max_new_tokens)->capture_default_str();
  sample_command->add_option("--temperature", sample.temperature)->capture_default_str();
  sample_command->add_option("--top-k", sample.top_k, "0: no filter")->capture_default_str();
  sample_command->add_option("--seed", sample.seed)->capture_default_str();
  sample_command->add_flag("--no-kv-cache", no_kv_cache, "recompute the whole context for every token");

  std::string eval_data;
  veil::Index windows = 0;
  auto* eval_command = app.add_subcommand("eval", "validation loss of a checkpoint on a text file");
  eval_command->add_option("--checkpoint", checkpoint)->required();
  eval_command->add_option("--data", eval_data)->required();
  eval_command->add_option("--windows", windows, "number of windows (default: all that fit)");

  CLI11_PARSE(app, argc, argv);
  try {
    if (train_command->parsed()) {
      if (!documents.empty()) train.documents = documents;
      nanogpt::train(train);
    } else if (sample_command->parsed()) {
      const auto loaded = nanogpt::read_checkpoint(checkpoint);
      auto model = nanogpt::load_model(loaded);
      sample.kv_cache = !no_kv_cache;
      const auto prompt_ids = loaded.vocabulary.encode(nanogpt::decode_utf8(sample.prompt, "--prompt"), "--prompt");
      if (prompt_ids.empty()) throw nanogpt::UsageError("--prompt must hold at least one character");
      const auto tokens = nanogpt::generate(*model, prompt_ids, sample);
      std::cout << nanogpt::encode_utf8(loaded.vocabulary.decode(tokens)) << std::endl;
    } else if (eval_command->parsed()) {
      const auto loaded = nanogpt::read_checkpoint(checkpoint);
      auto model = nanogpt::load_model(loaded);
      const auto text = nanogpt::decode_utf8(nanogpt::read_data(eval_data), eval_data);
      const auto ids = loaded.vocabulary.encode(text, ("'" + eval_data + "'").c_str());
      const auto cut = static_cast<std::ptrdiff_t>(static_cast<double>(ids.size()) * 0.9);
      const std::vector<std::int64_t> validation(ids.begin() + cut, ids.end());
      std::cout << "val_loss " << std::setprecision(8) << nanogpt::evaluate_windows(*model, validation, windows)
                << std::endl;
    }
  } catch (const std::exception& error) {  // UsageError, veil::Error, I/O: one line, exit code 1
    std::string message = error.what();
    for (std::size_t at; (at = message.find("\n  ")) != std::string::npos;) message.replace(at, 3, "; ");
    std::replace(message.begin(), message.end(), '\n', ' ');
    std::cerr << "nanogpt: error: " << message << std::endl;
    return 1;
  }
  return 0;
}
