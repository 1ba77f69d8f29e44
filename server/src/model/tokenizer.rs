//! GIT's BERT WordPiece tokenizer through the `tokenizers` crate: from `tokenizer.json`, or
//! built from `vocab.txt` (+ `tokenizer_config.json`) as transformers' `BertTokenizer` does.
//! Also the streaming detokenizer whose text deltas add up to exactly the final text.

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{GitcapError, Result};

const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

pub struct GitTokenizer {
    inner: Tokenizer,
}

impl GitTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let mut inner = if json.exists() {
            Tokenizer::from_file(&json)
                .map_err(|e| GitcapError::model_files(format!("invalid {}: {e}", json.display())))?
        } else if vocab.exists() {
            from_vocab(&vocab, lower_case(dir))?
        } else {
            return Err(GitcapError::model_files(format!(
                "{} has neither tokenizer.json nor vocab.txt",
                dir.display()
            )));
        };
        // Some tokenizer.json files carry padding/truncation settings for embedding models;
        // transformers ignores them when tokenizing a single prompt, and so do we.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| GitcapError::Tokenizer(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Token ids of `text` without special tokens (a VQA question; [CLS] is added by the caller).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self.inner.encode(text, false).map_err(|e| GitcapError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// Text of `ids` without special tokens, with BERT's clean-up of spaces.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.inner.decode(&ids, true).map_err(|e| GitcapError::Tokenizer(e.to_string()))
    }

    pub fn is_special(&self, id: i64) -> bool {
        self.inner.id_to_token(id as u32).is_some_and(|t| SPECIAL_TOKENS.contains(&t.as_str()))
    }

    /// `(id, token, logprob)` for the (id, logprob) pairs of a step: each token as the
    /// vocabulary spells it (WordPiece `##` kept).
    pub fn top_logprobs(&self, top: &[(i64, f32)]) -> Vec<(i64, String, f32)> {
        top.iter().map(|&(id, logprob)| (id, self.inner.id_to_token(id as u32).unwrap_or_default(), logprob)).collect()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn lower_case(dir: &Path) -> bool {
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
    let value = config.and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    value.and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool())).unwrap_or(true)
}

fn from_vocab(vocab: &Path, lower_case: bool) -> Result<Tokenizer> {
    let path = vocab.to_str().ok_or_else(|| GitcapError::model_files("vocab.txt path is not UTF-8"))?;
    let model = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| GitcapError::model_files(format!("invalid {path}: {e}")))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lower_case)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Turns generated ids into text deltas for streaming. Deltas concatenate to exactly
/// `tokenizer.decode(all ids)`: BERT's clean-up can rewrite the end of the text when the
/// next token arrives (`it '` + `s` → `it's`), so a trailing word that such a rule could still
/// change is held back until the next token, or the end.
pub struct TextStream<'a> {
    tokenizer: &'a GitTokenizer,
    ids: Vec<i64>,
    emitted: String,
}

impl<'a> TextStream<'a> {
    pub fn tokenizer(&self) -> &'a GitTokenizer {
        self.tokenizer
    }

    pub fn new(tokenizer: &'a GitTokenizer) -> Self {
        Self { tokenizer, ids: vec![], emitted: String::new() }
    }

    /// Adds a token; returns the text that is now certain (all of it when `last`).
    pub fn push(&mut self, id: i64, last: bool) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        let stable = match text.rfind(' ') {
            Some(space) if !last && may_be_rewritten(&text[space + 1..]) => &text[..space],
            _ => text.as_str(),
        };
        Ok(self.advance(stable))
    }

    fn advance(&mut self, text: &str) -> String {
        match text.strip_prefix(self.emitted.as_str()) {
            Some(delta) if !delta.is_empty() => {
                let delta = delta.to_string();
                self.emitted.push_str(&delta);
                delta
            }
            _ => String::new(),
        }
    }
}

/// Words that the WordPiece decoder's clean-up rules may merge with what follows:
/// `' ` before a word, and `do` before `not`.
fn may_be_rewritten(last_word: &str) -> bool {
    matches!(last_word, "'" | "do")
}
