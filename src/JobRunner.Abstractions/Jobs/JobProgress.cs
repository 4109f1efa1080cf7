namespace JobRunner;

/// <summary>Progress reported by a running attempt.</summary>
/// <param name="Fraction">The fraction done, from 0 to 1, or <see langword="null"/> when unknown.</param>
/// <param name="Message">A short human-readable status.</param>
public readonly record struct JobProgress(double? Fraction, string? Message);
