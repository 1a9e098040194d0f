//! Chat templates (the Jinja in `tokenizer.chat_template`), rendered with minijinja the way
//! HF transformers renders them: `trim_blocks` and `lstrip_blocks` on, Python string methods
//! available, `raise_exception` for templates that reject a conversation.
//!
//! Templates come from model files, so they are treated as untrusted: rendering is bounded in
//! work (fuel) and recursion, and every failure is an error value.

use crate::tokenizer::SpecialTokens;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

/// Rendering work allowed per conversation (minijinja fuel units, about one per instruction).
const FUEL: u64 = 5_000_000;

#[derive(thiserror::Error, Debug)]
pub enum TemplateError {
    #[error("the model has no chat template")]
    Missing,
    #[error("invalid chat template: {0}")]
    Syntax(String),
    #[error("chat template failed: {0}")]
    Render(String),
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.to_string(), content: content.to_string() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool, special: &SpecialTokens) -> Result<String, TemplateError> {
        let template = self.env.get_template("chat").map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let token = |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        let ctx = context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => token(&special.bos),
            eos_token => token(&special.eos),
        };
        template.render(ctx).map_err(|e| TemplateError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML).unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true, &SpecialTokens::default()).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_trim_blocks_work() {
        let src = "{% for m in messages %}\n  {{ m.content.strip().upper() }}|\n{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t.render(&[ChatMessage::new("user", "  a b ")], false, &SpecialTokens::default()).unwrap();
        assert_eq!(out, "  A B|\n");
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let err = t.render(&[], false, &SpecialTokens::default()).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
        assert!(matches!(ChatTemplate::new("{% for %}"), Err(TemplateError::Syntax(_))));
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let t = ChatTemplate::new("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}").unwrap();
        assert!(matches!(t.render(&[], false, &SpecialTokens::default()), Err(TemplateError::Render(_))));
    }
}
