//! What constrained decoding costs a batch: 16 concurrent chat requests, each constrained by
//! a JSON schema, then the same prompts unconstrained for exactly as many tokens each; then
//! (on a model whose template offers tools) the prompts with a tool offered, the call
//! required (constrained), then left to the model (unconstrained) for as many tokens. Output
//! tokens per second of each and the ratios, and the time of one token mask on its own
//! (llguidance over the model's vocabulary, the work done per constrained row per step).
//!
//! `cargo bench --bench constrained [-- MODEL]` (a manifest name; default: the default
//! model) runs the full measurement; under `cargo test` it runs a 2-stream smoke version.

use ballast::backend::cpu::{CpuBackend, Precision};
use ballast::chat_template::ChatMessage;
use ballast::constraint::{Constraint, Grammars};
use ballast::engine::{Engine, EngineConfig};
use ballast::model::{self, LoadOptions};
use ballast::request::{Prompt, Request};
use ballast::tools::{Function, ToolChoice, Tools};
use std::time::Instant;

const SCHEMA: &str = r#"{"type": "object", "properties": {
    "title": {"type": "string", "minLength": 20, "maxLength": 60},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 3, "maxItems": 6},
    "rating": {"type": "integer", "minimum": 1, "maximum": 5},
    "summary": {"type": "string", "minLength": 80, "maxLength": 200}},
  "required": ["title", "tags", "rating", "summary"], "additionalProperties": false}"#;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let name = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (streams, max_tokens) = if full { (16, 96) } else { (2, 4) };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let manifest = ballast::fetch::Manifest::builtin();
    let entry = match &name {
        Some(n) => manifest.get(n).expect("a model of models/manifest.json"),
        None => manifest.default_model(),
    };
    let path = ballast::fetch::ensure(entry, &dir).expect("the model");
    let threads = CpuBackend::default_threads();
    let backend = CpuBackend::new(threads, Precision::Int16).unwrap();
    let loaded = model::load(&path, LoadOptions::default(), &mut |_, _| {}).unwrap();
    let config = EngineConfig { max_num_seqs: streams, prefix_caching: false, ..EngineConfig::default() };
    let engine = Engine::start(backend, loaded, config).unwrap();
    let topics =
        ["a mystery novel", "a jazz album", "a hiking trail", "a cookbook", "a sci-fi film", "a board game", "a museum", "a podcast"];
    let prompt = |i: usize| {
        let q = format!("Review {} (number {i}) as JSON with a title, tags, a rating and a summary.", topics[i % topics.len()]);
        Prompt::Chat(vec![ChatMessage::new("user", &q)])
    };
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    // Each run returns every stream's token count; the unconstrained twin of a constrained run
    // generates exactly those counts (EOS ignored), so both do the same work in the same batch
    // shapes and only the constraint differs.
    let run = |what: &str, make: &dyn Fn(usize) -> Request| {
        let start = Instant::now();
        let handles: Vec<_> = (0..streams).map(|i| engine.submit(make(i)).unwrap()).collect();
        let counts: Vec<usize> = handles.into_iter().map(|s| s.collect_output()[0].ids.len()).collect();
        let secs = start.elapsed().as_secs_f64();
        let tokens: usize = counts.iter().sum();
        println!("constrained: {what}: {streams} streams, {tokens} tokens in {secs:.2} s, {:.1} tok/s", tokens as f64 / secs);
        (tokens as f64 / secs, counts)
    };
    let twin = |i: usize, counts: &[usize]| Request { ignore_eos: true, ..Request::new(prompt(i)).max_tokens(counts[i].max(1)) };
    let with = |i: usize| Request::new(prompt(i)).max_tokens(max_tokens);
    // Warm-up: the weights paged in, the vocabulary's token trie built (on first use).
    let warm = Request { constraint: Some(Constraint::JsonObject), ..Request::new(prompt(0)).max_tokens(4) };
    engine.submit(warm).unwrap().collect_output();
    let (json, counts) = run("JSON schema", &|i| Request { constraint: Some(Constraint::JsonSchema(schema.clone())), ..with(i) });
    let (free, _) = run("unconstrained, the same lengths", &|i| twin(i, &counts));
    println!("constrained: JSON schema at {:.2}x the unconstrained throughput", json / free);
    if engine.tool_format().is_some() {
        let review = Function { name: "save_review".into(), description: None, parameters: Some(schema.clone()), strict: None };
        // The same prompts (the template lists the tool), the call required, then left to the
        // model (unconstrained) for as many tokens.
        let tools = |choice| Some(Tools { functions: vec![review.clone()], choice, parallel: false });
        let (call, counts) = run("required tool call", &|i| Request { tools: tools(ToolChoice::Required), ..with(i) });
        let (auto, _) = run("tool offered, auto (unconstrained), the same lengths", &|i| Request {
            tools: tools(ToolChoice::Auto),
            ..twin(i, &counts)
        });
        println!("constrained: required tool call at {:.2}x the throughput of the same prompts unconstrained", call / auto);
    }
    // One mask on its own: a matcher walked through a valid output, timed at every step.
    let tok = engine.tokenizer().unwrap();
    let vocab = tok.vocab_size();
    let grammars = Grammars::new(tok, vocab, &engine.model_info().eos_token_ids).unwrap();
    let mut constraints = vec![("JSON schema", Constraint::JsonSchema(schema.clone()))];
    if let Some(format) = engine.tool_format() {
        let review = Function { name: "save_review".into(), description: None, parameters: Some(schema), strict: None };
        constraints.push((
            "required tool call",
            format.constraint(&Tools { functions: vec![review], choice: ToolChoice::Required, parallel: false }),
        ));
    }
    for (what, c) in constraints {
        let mut m = grammars.compile(&c).unwrap();
        let mut logits = vec![0.0f32; vocab];
        let (mut steps, mut secs, mut worst) = (0, 0.0, 0.0f64);
        while !m.is_stopped() && steps < 200 {
            let t = Instant::now();
            ballast::constraint::mask(&mut m, &mut logits).unwrap();
            let dt = t.elapsed().as_secs_f64();
            (secs, worst) = (secs + dt, worst.max(dt));
            // The allowed token with the highest id (a deterministic walk through the grammar).
            let Some(next) = logits.iter().rposition(|x| x.is_finite()) else { break };
            logits.fill(0.0);
            if m.consume_token(next as u32).is_err() {
                break;
            }
            steps += 1;
        }
        let mean = secs / steps.max(1) as f64 * 1e6;
        println!(
            "constrained: one {what} mask over {vocab} tokens: {mean:.0} µs on average, {:.0} µs at most ({steps} steps)",
            worst * 1e6
        );
    }
}
