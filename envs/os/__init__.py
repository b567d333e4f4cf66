"""The OS environment (AgentBench's OS interaction): tasks, prompts, actions, checks, trust, episode, training data."""
