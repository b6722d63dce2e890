"""A program that starts the in-process shield itself, with one call, then runs the client."""

import os

import netshield.shield

netshield.shield.start(os.environ["SHIELD_CONFIG"])

import client  # noqa: E402,F401 -- the client's request, after the shield is up
