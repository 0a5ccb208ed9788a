"""physical"""
