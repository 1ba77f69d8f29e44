//! Stop sequences (`stop`): text is held back while it could still be the start of one, and
//! generation ends where one appears, without it.

/// Watches a choice's text for the request's stop sequences.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text seen but not yet released (it may begin a stop sequence).
    held: String,
}

/// What arriving text releases.
#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    /// Text to send on; no stop sequence yet.
    Text(String),
    /// A stop sequence appeared: the text before it, and the end of the choice.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Takes the next piece of text.
    pub fn push(&mut self, text: &str) -> Released {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min() {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Released::Stopped(before);
        }
        // Keep the longest tail that is the start of a stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| (1..stop.len()).filter(|&n| stop.is_char_boundary(n)).map(move |n| &stop[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let release = self.held.len() - keep;
        let released = self.held[..release].to_string();
        self.held.drain(..release);
        Released::Text(released)
    }

    /// The end of the text: whatever is held back is text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_held_back_only_while_it_may_start_a_stop_sequence() {
        let mut m = StopMatcher::new(vec!["the end".into(), "\n".into()]);
        // "t" may begin "the end": held back until the next piece shows it does not.
        assert_eq!(m.push("a dog at"), Released::Text("a dog a".into()));
        assert_eq!(m.push(" the"), Released::Text("t ".into()));
        assert_eq!(m.push(" park"), Released::Text("the park".into()));
        assert_eq!(m.push(" the e"), Released::Text(" ".into()));
        assert_eq!(m.push("nd!"), Released::Stopped("".into()));
    }

    #[test]
    fn the_text_before_the_first_stop_is_kept() {
        let mut m = StopMatcher::new(vec!["cat".into(), "dog".into()]);
        assert_eq!(m.push("a dog and a cat"), Released::Stopped("a ".into()));
        let mut m = StopMatcher::new(vec!["xyz".into()]);
        assert_eq!(m.push("ab x"), Released::Text("ab ".into()));
        assert_eq!(m.finish(), "x");
        let mut none = StopMatcher::new(vec![String::new()]);
        assert_eq!(none.push("anything"), Released::Text("anything".into()));
    }
}
