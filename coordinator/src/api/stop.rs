//! Stop strings over streamed text: text that might be the start of a stop
//! string is held back until the next piece says whether it is.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    /// Adds generated text. Returns the text that may be shown now and
    /// whether a stop string matched (the text then ends before it and the
    /// generation is over).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest tail that begins some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        (out, false)
    }

    /// The generation ended without a match: what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_text_through_without_stops() {
        let mut m = StopMatcher::new(Vec::new());
        assert_eq!(m.push("hello"), ("hello".to_string(), false));
    }

    #[test]
    fn stop_split_over_pieces_is_cut() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hi there"), ("Hi there".to_string(), false));
        assert_eq!(m.push("!\n"), ("!".to_string(), false));
        assert_eq!(m.push("\nUs"), (String::new(), false));
        assert_eq!(m.push("er: more"), (String::new(), true));
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("the EN"), ("the ".to_string(), false));
        assert_eq!(m.push("D"), (String::new(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), (String::new(), false));
        assert_eq!(m.push("ough"), ("ENough".to_string(), false));
        assert_eq!(m.push("E"), (String::new(), false));
        assert_eq!(m.finish(), "E");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        let mut m = StopMatcher::new(vec!["b".into(), "é!".into()]);
        assert_eq!(m.push("aé!cb"), ("a".to_string(), true));
        let mut m = StopMatcher::new(vec!["éx".into()]);
        assert_eq!(m.push("ü é"), ("ü ".to_string(), false));
    }
}
