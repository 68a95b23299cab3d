"""`python main.py bench`: router, generation, llama.cpp peer, adapter memory and training cost, side by side."""
