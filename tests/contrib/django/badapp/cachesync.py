from django.contrib.auth.models import User

from cachesync.contrib.django import register

register(User, keys=["user:{usrname}"])
