"""Small real agents for the example fleets. They need no external API keys: each one leaves a
trace (a log line with its agent, room and job id) so a newcomer can see which agent took which
job."""
