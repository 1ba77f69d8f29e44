//! Streamed text deltas add up to exactly the decoded text, for many token sequences with
//! WordPiece `##` pieces, punctuation and the words BERT's clean-up rewrites.

mod common;

use rand::{Rng, SeedableRng};

use common::fixtures::model_dir;
use gitcap_server::model::tokenizer::{GitTokenizer, TextStream};

#[test]
fn deltas_concatenate_to_the_final_text() {
    for model in ["tiny-git-image", "tiny-git-video"] {
        let tokenizer = GitTokenizer::from_dir(&model_dir(model)).unwrap();
        let id = |text: &str| tokenizer.encode(text).unwrap()[0];
        // Tokens the clean-up rules touch, pieces that join the previous word, and punctuation.
        // (About a fifth of the vocabulary is `##` pieces, so random ids bring plenty of them.)
        let tricky: Vec<i64> = ["'", "s", "do", "not", "n", "t", "m", "re", "ve", ".", ",", "?", "!", "a", "the"]
            .iter()
            .map(|t| id(t))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut with_pieces = 0;
        for _ in 0..2000 {
            let len = rng.random_range(1..16);
            let ids: Vec<i64> = (0..len)
                .map(|_| {
                    if rng.random_bool(0.6) {
                        tricky[rng.random_range(0..tricky.len())]
                    } else {
                        rng.random_range(999..30522)
                    }
                })
                .collect();
            let mut stream = TextStream::new(&tokenizer);
            let streamed: String =
                ids.iter().enumerate().map(|(i, &t)| stream.push(t, i + 1 == ids.len()).unwrap()).collect();
            let text = tokenizer.decode(&ids).unwrap();
            assert_eq!(streamed, text, "{model}: ids {ids:?}");
            with_pieces += usize::from(ids.iter().any(|&t| is_piece(&tokenizer, t)));
        }
        assert!(with_pieces > 100, "the sample should contain many ## pieces");
    }
}

fn is_piece(tokenizer: &GitTokenizer, id: i64) -> bool {
    tokenizer.decode(&[tokenizer.encode("a").unwrap()[0], id]).map(|t| !t.contains(' ')).unwrap_or(false)
}
