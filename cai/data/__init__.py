"""What a stage makes and keeps: `tasks` (self-instruct's bookkeeping), `constraints` (checkable
rules), `contrast` (the principles' own pairs), `principles` (critique, revision and judge
requests), `quality` (relevance, repetition, length), `refusal` (did the answer decline),
`guard` (Llama Guard 3's verdicts) and `pairs` (the preference pairs and their filters)."""
