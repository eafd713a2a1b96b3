//! The last stage's grammar compiler, built from the slice's tokenizer
//! metadata the first time a sequence asks for a constraint (a stage that
//! never sees one pays nothing).

use strata_model::constraint::{GrammarCompiler, TokenConstraint};
use strata_model::tokenizer::Tokenizer;
use strata_model::GgufFile;

#[derive(Default)]
pub struct Grammars {
    compiler: Option<GrammarCompiler>,
}

impl Grammars {
    /// Compiles a sequence's grammar (wire text) whose first token is at
    /// position `start`.
    pub fn compile(
        &mut self,
        file: &GgufFile,
        wire: &str,
        start: usize,
    ) -> Result<TokenConstraint, String> {
        if self.compiler.is_none() {
            let tok = Tokenizer::from_gguf(file)
                .map_err(|e| format!("constrained decoding needs the model's tokenizer: {e}"))?;
            let started = std::time::Instant::now();
            self.compiler = Some(GrammarCompiler::new(&tok).map_err(|e| e.to_string())?);
            tracing::info!(
                "grammar compiler for {} tokens built in {} ms",
                tok.vocab_size(),
                started.elapsed().as_millis()
            );
        }
        let compiler = self.compiler.as_ref().ok_or("no grammar compiler")?;
        compiler
            .compile_wire(wire, start)
            .map_err(|e| format!("sequence grammar: {e}"))
    }
}
