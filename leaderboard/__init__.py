"""Result store -> static leaderboard website (reads the store only; never imports torch)."""
